"""SIGKILL the sidecar mid-flight, restart it on the same database, and check nothing is lost
or recorded twice.

Uses its own outrigger process and worker, not the session ones. On Postgres the restarted
sidecar is a new lease owner: it takes the killed one's work over once the leases expire.
"""

from __future__ import annotations

import signal
from datetime import timedelta

import pytest
from durabletask import history, task
from durabletask.client import OrchestrationStatus

from database import new_database, on_postgres
from harness import new_client, new_worker, start_sidecar
from helpers import assert_history_consistent, new_id, of_type, poll_until, wait_done

COUNT = 50
# On Postgres the restarted sidecar waits for the killed one's leases to expire: keep them short.
SIDECAR_ARGS = ["--lease-seconds", "3"] if on_postgres() else []


def crash_step(ctx: task.ActivityContext, n: int) -> int:
    return n + 1


def crash_workflow(ctx: task.OrchestrationContext, n: int):
    a = yield ctx.call_activity(crash_step, input=n)
    yield ctx.create_timer(timedelta(seconds=1 + n % 2))
    b = yield ctx.call_activity(crash_step, input=10 * a)
    parts = yield task.when_all([ctx.call_activity(crash_step, input=b + i) for i in range(3)])
    return sum(parts)


def expected_output(n: int) -> int:
    b = 10 * (n + 1) + 1
    return sum(b + i + 1 for i in range(3))


def start_worker(address: str, name: str):
    worker = new_worker(address, name)
    worker.add_orchestrator(crash_workflow)
    worker.add_activity(crash_step)
    worker.start()
    return worker


@pytest.mark.timeout(240)
def test_sigkill_and_restart_loses_and_duplicates_nothing(tmp_path):
    db = new_database("crash", tmp_path)
    prefix = new_id("crash")
    ids = [f"{prefix}-{n:02d}" for n in range(COUNT)]
    cleanup = [db.drop]
    try:
        first = start_sidecar("outrigger-crash-1", db, SIDECAR_ARGS)
        cleanup.append(first.kill)
        worker = start_worker(first.address, "crash-worker-1")
        cleanup.append(worker.stop)
        client = new_client(first.address, "crash-client-1")
        cleanup.append(client.close)

        for n, iid in enumerate(ids):
            client.schedule_new_orchestration(crash_workflow, input=n, instance_id=iid)

        def completed_count() -> int:
            states = [client.get_orchestration_state(iid, fetch_payloads=False) for iid in ids]
            return sum(1 for s in states if s is not None and s.runtime_status == OrchestrationStatus.COMPLETED)

        done_before_kill = poll_until(completed_count, lambda k: k > 0, timeout=60, interval=0.02,
                                      what="the first instance to complete")
        first.kill()
        assert first.returncode == -signal.SIGKILL
        assert done_before_kill < COUNT, "everything finished before the kill; nothing was interrupted"
        print(f"killed the sidecar with {done_before_kill}/{COUNT} instances completed")

        worker.stop()
        client.close()

        second = start_sidecar("outrigger-crash-2", db, SIDECAR_ARGS)
        cleanup.append(second.kill)
        worker = start_worker(second.address, "crash-worker-2")
        cleanup.append(worker.stop)
        client = new_client(second.address, "crash-client-2")
        cleanup.append(client.close)

        wrong = {}
        for n, iid in enumerate(ids):
            state = wait_done(client, iid, timeout=90)
            if state.runtime_status != OrchestrationStatus.COMPLETED or state.get_output() != expected_output(n):
                wrong[iid] = (str(state.runtime_status), state.serialized_output, state.failure_details)
        assert wrong == {}, f"{len(wrong)} instances ended wrongly after the restart"

        for iid in ids:
            events = client.get_orchestration_history(iid)
            assert_history_consistent(iid, events)
            assert len(of_type(events, history.TaskScheduledEvent)) == 5, iid
            assert len(of_type(events, history.TaskCompletedEvent)) == 5, iid
            assert len(of_type(events, history.TimerCreatedEvent)) == 1, iid
            assert len(of_type(events, history.TimerFiredEvent)) == 1, iid

        second.stop()
    finally:
        for action in reversed(cleanup):
            try:
                action()
            except Exception:  # best-effort cleanup; the assertion above matters
                pass
