"""Polyglot task hub: a Python client starts orchestrations hosted by a JavaScript worker whose
activities are hosted by a Python worker; both workers send work-item filters, so each gets
only its own kind of work. Work for a name no connected worker has registered waits, durably,
until a worker that has it connects.

On Postgres (OUTRIGGER_TEST_STORE=postgres) the two workers and the client use three sidecars
sharing one database, so the filters are honoured across sidecars too.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from durabletask import client as dtclient
from durabletask import task

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "python"))

from database import new_database, on_postgres  # noqa: E402
from harness import new_client, new_worker, start_sidecar  # noqa: E402

TIMEOUT = 60


def poly_charge(ctx: task.ActivityContext, order: str) -> str:
    return f"python charged {order}"


def poly_ship(ctx: task.ActivityContext, order: str) -> str:
    return f"python shipped {order}"


def poly_late(ctx: task.ActivityContext, order: str) -> str:
    return f"python late activity for {order}"


def late_comer(ctx: task.OrchestrationContext, order: str):
    return f"python late orchestration for {order}"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """Sidecars for the client, the JS worker and the Python worker (one on SQLite)."""
    db = new_database("polyglot", tmp_path_factory.mktemp("polyglot"))
    count = 3 if on_postgres() else 1
    sidecars = [start_sidecar(f"polyglot-{n}", db) for n in range(count)]
    yield [s.address for s in sidecars] * (3 // count)
    for s in sidecars:
        s.stop()
    db.drop()


@pytest.fixture(scope="module")
def js_worker(hub):
    proc = subprocess.Popen(["node", str(HERE / "js_worker.js"), hub[1]], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", f"the JavaScript worker did not start: {line}{proc.stdout.read()}"
    yield proc
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def py_worker(hub):
    w = new_worker(hub[2], "polyglot-python-worker")
    w.add_activity(poly_charge)
    w.add_activity(poly_ship)
    w.use_work_item_filters()
    w.start()
    yield w
    w.stop()


@pytest.fixture(scope="module")
def client(hub, js_worker, py_worker):
    c = new_client(hub[0], "polyglot-client")
    yield c
    c.close()


def test_one_orchestration_crosses_both_languages(client):
    ids = [client.schedule_new_orchestration("PolyglotOrder", input=f"order-{n}", instance_id=f"poly-{n}")
           for n in range(5)]
    for n, i in enumerate(ids):
        state = client.wait_for_orchestration_completion(i, timeout=TIMEOUT)
        assert state.runtime_status == dtclient.OrchestrationStatus.COMPLETED, state.failure_details
        assert state.serialized_output == (
            f'"js orchestration: python charged order-{n}; python shipped order-{n}"')


def test_unregistered_work_waits_until_a_worker_that_has_it_connects(client, hub):
    # Nobody has the orchestration "late_comer", nor the activity "poly_late".
    client.schedule_new_orchestration(late_comer, input="a", instance_id="poly-late-orchestration")
    client.schedule_new_orchestration("PolyglotNeedsLateActivity", input="b", instance_id="poly-late-activity")
    # Work the connected workers do have still flows past it...
    client.schedule_new_orchestration("PolyglotOrder", input="c", instance_id="poly-meanwhile")
    done = client.wait_for_orchestration_completion("poly-meanwhile", timeout=TIMEOUT)
    assert done.runtime_status == dtclient.OrchestrationStatus.COMPLETED
    # ...while the unregistered work waits, neither failed nor lost.
    assert client.get_orchestration_state("poly-late-orchestration").runtime_status == \
        dtclient.OrchestrationStatus.PENDING
    client.wait_for_orchestration_start("poly-late-activity", timeout=TIMEOUT)
    assert client.get_orchestration_state("poly-late-activity").runtime_status == \
        dtclient.OrchestrationStatus.RUNNING

    late = new_worker(hub[2], "polyglot-late-worker")
    late.add_orchestrator(late_comer)
    late.add_activity(poly_late)
    late.use_work_item_filters()
    late.start()
    try:
        state = client.wait_for_orchestration_completion("poly-late-orchestration", timeout=TIMEOUT)
        assert state.serialized_output == '"python late orchestration for a"'
        state = client.wait_for_orchestration_completion("poly-late-activity", timeout=TIMEOUT)
        assert state.serialized_output == '"js orchestration: python late activity for b"'
    finally:
        late.stop()
