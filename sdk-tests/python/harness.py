"""Building blocks shared by conftest.py and tests that manage their own sidecar."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Sequence

from durabletask.client import TaskHubGrpcClient
from durabletask.worker import ConcurrencyOptions, TaskHubGrpcWorker

from database import Database, drop_leftover_databases
from sidecar import Sidecar

HERE = Path(__file__).resolve().parent
_live_sidecars: list[Sidecar] = []

# Figures a test wants shown at the end of the run (e.g. measured takeover times), one per line.
SUMMARY: list[str] = []


def _session_log_dir(keep: int = 10) -> Path:
    base = Path(os.environ.get("OUTRIGGER_TEST_LOG_DIR", HERE / ".logs"))
    path = base / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    path.mkdir(parents=True, exist_ok=True)
    # Keep the logs of the last few sessions only.
    for old in sorted((p for p in base.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


# One directory per pytest session: sidecar output plus SDK client/worker logs.
LOG_DIR = _session_log_dir()


def sdk_logger(name: str) -> logging.Logger:
    """SDK client/worker logs go to a file in the session log directory."""
    logger = logging.getLogger(f"sdk-tests.{name}")
    if not logger.handlers:
        handler = logging.FileHandler(LOG_DIR / f"{name}.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def start_sidecar(name: str, database: Database, extra_args: Sequence[str] = ()) -> Sidecar:
    """Start outrigger on a free port, logging to LOG_DIR/<name>.log."""
    sidecar = Sidecar(database.url, log_path=LOG_DIR / f"{name}.log", extra_args=extra_args)
    _live_sidecars.append(sidecar)
    return sidecar.start()


def live_sidecars() -> list[Sidecar]:
    return list(_live_sidecars)


def new_worker(address: str, name: str) -> TaskHubGrpcWorker:
    return TaskHubGrpcWorker(
        host_address=address,
        logger=sdk_logger(name),
        concurrency_options=ConcurrencyOptions(maximum_thread_pool_workers=16),
    )


def new_client(address: str, name: str) -> TaskHubGrpcClient:
    return TaskHubGrpcClient(host_address=address, logger=sdk_logger(name))


@atexit.register
def _kill_leftover_sidecars() -> None:
    for sidecar in _live_sidecars:
        sidecar.kill()
    drop_leftover_databases()
