"""Session fixtures: one outrigger, one SDK worker and one SDK client for the suite.

Every test uses its own instance ids, so tests share the sidecar without
seeing each other. The sidecar's store is SQLite, or Postgres with
OUTRIGGER_TEST_STORE=postgres (see database.py). test_crash.py,
test_scaleout.py and test_postgres_restart.py start their own sidecars and
workers.
"""

from __future__ import annotations

import pytest
from durabletask.worker import TaskHubGrpcWorker

import registry
from database import new_database, store_kind
from harness import LOG_DIR, SUMMARY, live_sidecars, new_client, new_worker, start_sidecar
from sidecar import Sidecar


@pytest.fixture(scope="session")
def sidecar(tmp_path_factory: pytest.TempPathFactory):
    db = new_database("suite", tmp_path_factory.mktemp("outrigger"))
    sc = start_sidecar("outrigger", db, extra_args=["--http-port", "0"])
    yield sc
    sc.stop()
    db.drop()


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


# Modules that kill sidecars or stop Postgres run after everything else, so that an outage they
# cause can never be what another test trips over.
DISRUPTIVE = ("test_crash.py", "test_entities_crash.py", "test_postgres_restart.py", "test_scaleout.py")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.path.name in DISRUPTIVE)


def pytest_report_header(config):
    return f"outrigger store: {store_kind()}"


def pytest_terminal_summary(terminalreporter):
    for line in SUMMARY:
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"sidecar and SDK logs: {LOG_DIR}")
