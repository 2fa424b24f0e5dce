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
from durabletask.grpc_options import GrpcChannelOptions, GrpcWorkerResiliencyOptions
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


def start_sidecar(name: str, database: Database, extra_args: Sequence[str] = (),
                  env: dict[str, str] | None = None) -> Sidecar:
    """Start outrigger on a free port, logging to LOG_DIR/<name>.log; `extra_args` are added to
    its command line, `env` to its environment."""
    sidecar = Sidecar(database.url, log_path=LOG_DIR / f"{name}.log", extra_args=extra_args, env=env)
    _live_sidecars.append(sidecar)
    return sidecar.start()


def live_sidecars() -> list[Sidecar]:
    return list(_live_sidecars)


# For tests that kill or cut off a sidecar that comes back within seconds: reconnect quickly
# rather than with the defaults' backoff (up to 30 s for the worker loop, 120 s for a channel).
_QUICK_CHANNEL = GrpcChannelOptions(raw_options=[
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
])
_QUICK_WORKER = GrpcWorkerResiliencyOptions(reconnect_backoff_base_seconds=0.1, reconnect_backoff_cap_seconds=1.0)


def new_worker(address: str, name: str, *, quick_reconnect: bool = False,
               concurrency: int | None = None) -> TaskHubGrpcWorker:
    """A worker with 16 threads, or `concurrency` threads and work items of each kind at once."""
    if concurrency is None:
        limits = ConcurrencyOptions(maximum_thread_pool_workers=16)
    else:
        limits = ConcurrencyOptions(maximum_concurrent_activity_work_items=concurrency,
                                    maximum_concurrent_orchestration_work_items=concurrency,
                                    maximum_thread_pool_workers=concurrency)
    return TaskHubGrpcWorker(
        host_address=address,
        logger=sdk_logger(name),
        concurrency_options=limits,
        channel_options=_QUICK_CHANNEL if quick_reconnect else None,
        resiliency_options=_QUICK_WORKER if quick_reconnect else None,
    )


def new_client(address: str, name: str, *, quick_reconnect: bool = False) -> TaskHubGrpcClient:
    return TaskHubGrpcClient(host_address=address, logger=sdk_logger(name),
                             channel_options=_QUICK_CHANNEL if quick_reconnect else None)


@atexit.register
def _kill_leftover_sidecars() -> None:
    for sidecar in _live_sidecars:
        sidecar.kill()
    drop_leftover_databases()
