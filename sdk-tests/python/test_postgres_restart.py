"""Postgres stops in the middle of a run and starts again: the sidecar answers UNAVAILABLE while
it is away, acknowledges nothing it could not store, and finishes every orchestration once it is
back, with clean histories.

Needs a local cluster the test may restart: OUTRIGGER_TEST_POSTGRES_CLUSTER="<version> <name>"
(tests/postgres.sh prints it). Every other user of that cluster sees the outage too.
"""

from __future__ import annotations

import os
import subprocess
import time
from datetime import timedelta

import grpc
import pytest
from durabletask import history, task
from durabletask.client import OrchestrationStatus

from database import new_database, postgres_only
from harness import SUMMARY, new_client, new_worker, start_sidecar
from helpers import assert_history_complete, new_id, of_type, poll_until, rpc_code, wait_done

CLUSTER = os.environ.get("OUTRIGGER_TEST_POSTGRES_CLUSTER", "").split()

pytestmark = [
    postgres_only,
    pytest.mark.skipif(len(CLUSTER) != 2, reason="needs OUTRIGGER_TEST_POSTGRES_CLUSTER='<version> <name>' "
                       "naming a local cluster pg_ctlcluster can restart"),
]

COUNT = 60
LATE = 10                # started once Postgres is back
OUTAGE_SECONDS = 3.0     # long enough for timers to come due and completions to fail meanwhile
LEASE_SECONDS = 3


def pgr_step(ctx: task.ActivityContext, n: int) -> int:
    return 2 * n + 1


def pgr_flow(ctx: task.OrchestrationContext, n: int):
    a = yield ctx.call_activity(pgr_step, input=n)
    yield ctx.create_timer(timedelta(seconds=1 + n % 2))
    parts = yield task.when_all([ctx.call_activity(pgr_step, input=a + i) for i in range(3)])
    return sum(parts)


def expected_output(n: int) -> int:
    a = 2 * n + 1
    return sum(2 * (a + i) + 1 for i in range(3))


def pg_cluster(action: str) -> None:
    version, name = CLUSTER
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, name, action],
                   check=True, timeout=120, capture_output=True)


def error_code(call) -> grpc.StatusCode | None:
    """The status an RPC fails with, or None when it succeeds."""
    try:
        call()
        return None
    except grpc.RpcError as e:
        return rpc_code(e)


@pytest.mark.timeout(300)
def test_postgres_restart_mid_run(tmp_path):
    db = new_database("pgrestart", tmp_path)
    prefix = new_id("pgrestart")
    ids = [f"{prefix}-{n:02d}" for n in range(COUNT)]
    late_ids = [f"{prefix}-late-{n:02d}" for n in range(LATE)]
    refused_id = f"{prefix}-refused"
    cleanup = [db.drop]
    try:
        sidecar = start_sidecar("outrigger-pgrestart", db, ["--lease-seconds", str(LEASE_SECONDS)])
        cleanup.append(sidecar.kill)
        worker = new_worker(sidecar.address, "pgrestart-worker", quick_reconnect=True)
        worker.add_orchestrator(pgr_flow)
        worker.add_activity(pgr_step)
        worker.start()
        cleanup.append(worker.stop)
        client = new_client(sidecar.address, "pgrestart-client", quick_reconnect=True)
        cleanup.append(client.close)

        for n, iid in enumerate(ids):
            client.schedule_new_orchestration(pgr_flow, input=n, instance_id=iid)

        def completed_count() -> int:
            states = [client.get_orchestration_state(iid, fetch_payloads=False) for iid in ids]
            return sum(1 for s in states if s is not None and s.runtime_status == OrchestrationStatus.COMPLETED)

        done_before = poll_until(completed_count, lambda k: k > 0, timeout=60, interval=0.05,
                                 what="the first instance to complete")
        assert done_before < COUNT, "everything finished before the outage; nothing was interrupted"

        stopped = time.monotonic()
        pg_cluster("stop")
        try:
            # While Postgres is away every answer that needs it is UNAVAILABLE, reads and writes.
            codes, answered_in = [], []
            while time.monotonic() - stopped < OUTAGE_SECONDS:
                asked = time.monotonic()
                codes.append(error_code(lambda: client.get_orchestration_state(ids[0])))
                answered_in.append(time.monotonic() - asked)
                time.sleep(0.2)  # probe interval for the length of the outage
            assert set(codes) == {grpc.StatusCode.UNAVAILABLE}, codes
            code = error_code(lambda: client.schedule_new_orchestration(pgr_flow, input=0, instance_id=refused_id))
            assert code == grpc.StatusCode.UNAVAILABLE, code
        finally:
            pg_cluster("start")
        back = time.monotonic()
        print(f"Postgres was down {back - stopped:.1f} s with {done_before}/{COUNT} instances completed")

        # The sidecar reconnects by itself: work started before the outage finishes, new work runs.
        for n, iid in enumerate(late_ids):
            client.schedule_new_orchestration(pgr_flow, input=n, instance_id=iid)
        first_late = wait_done(client, late_ids[0], timeout=90)
        recovered = time.monotonic() - back

        wrong = {}
        for n, iid in [*enumerate(ids), *enumerate(late_ids)]:
            state = wait_done(client, iid, timeout=90)
            if state.runtime_status != OrchestrationStatus.COMPLETED or state.get_output() != expected_output(n):
                wrong[iid] = (str(state.runtime_status), state.serialized_output, state.failure_details)
        assert first_late.runtime_status == OrchestrationStatus.COMPLETED
        assert wrong == {}, f"{len(wrong)} instances ended wrongly after the Postgres restart"

        # Refused while Postgres was away: not half-created.
        assert client.get_orchestration_state(refused_id) is None

        for iid in [*ids, *late_ids]:
            events = client.get_orchestration_history(iid)
            assert_history_complete(iid, events)
            assert len(of_type(events, history.TaskScheduledEvent)) == 4, iid
            assert len(of_type(events, history.TimerCreatedEvent)) == 1, iid

        line = (f"postgres restart: down {back - stopped:.1f} s, reads answered UNAVAILABLE within "
                f"{max(answered_in):.1f} s; an orchestration started after it came back completed "
                f"{recovered:.1f} s later; {COUNT + LATE} orchestrations complete")
        print(line)
        SUMMARY.append(line)
    finally:
        for action in reversed(cleanup):
            try:
                action()
            except Exception:  # best-effort cleanup; the assertions above matter
                pass
