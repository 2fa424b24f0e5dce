"""Session fixtures: one outrigger, one SDK worker and one SDK client for the suite.

Every test uses its own instance ids, so tests share the sidecar without
seeing each other. test_crash.py starts its own sidecar and worker.
"""

from __future__ import annotations

import pytest
from durabletask.worker import TaskHubGrpcWorker

import registry
from harness import LOG_DIR, live_sidecars, new_client, new_worker, start_sidecar
from sidecar import Sidecar


@pytest.fixture(scope="session")
def sidecar(tmp_path_factory: pytest.TempPathFactory):
    db_path = tmp_path_factory.mktemp("outrigger") / "suite.db"
    sc = start_sidecar("outrigger", db_path)
    yield sc
    sc.stop()


@pytest.fixture(scope="session")
def worker(sidecar: Sidecar):
    w = new_worker(sidecar.address, "worker")
    registry.register_all(w)  # every test module has been imported by now
    w.start()
    yield w
    w.stop()


@pytest.fixture(scope="session")
def client(sidecar: Sidecar, worker: TaskHubGrpcWorker):
    c = new_client(sidecar.address, "client")
    yield c
    c.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        for sc in live_sidecars():
            try:
                lines = sc.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
            except OSError:
                continue
            report.sections.append((f"last lines of {sc.log_path}", "\n".join(lines[-40:])))
    return report


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"sidecar and SDK logs: {LOG_DIR}")
