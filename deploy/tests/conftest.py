"""The deployment suite: the container image, the manifests, TLS, API keys and the SIGTERM
drain, checked from outside with the Python SDK. It reuses the SDK suite's harness
(sdk-tests/python) for starting sidecars and logging."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "sdk-tests" / "python"))
