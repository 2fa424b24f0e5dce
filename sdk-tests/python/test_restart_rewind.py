"""Restarting finished instances and rewinding failed ones."""

from __future__ import annotations

import threading
from collections import Counter

from durabletask import history, task
from durabletask.client import OrchestrationStatus

from helpers import (assert_completed, event_kinds, new_id, of_type, wait_done,
                     wait_for_status)
from registry import activity, orchestrator


@activity
def shout(ctx: task.ActivityContext, text: str) -> str:
    return text.upper() + "!"


@orchestrator
def shouts(ctx: task.OrchestrationContext, text: str):
    return (yield ctx.call_activity(shout, input=text))


def test_restart_with_same_id(client):
    iid = new_id("restart")
    client.schedule_new_orchestration(shouts, input="again", instance_id=iid)
    first = assert_completed(wait_done(client, iid))
    [first_start] = of_type(client.get_orchestration_history(iid), history.ExecutionStartedEvent)

    assert client.restart_orchestration(iid) == iid

    second = assert_completed(wait_done(client, iid))
    assert second.get_input() == "again"
    assert second.get_output() == "AGAIN!"
    # A new execution, not the old state read back.
    assert second.created_at > first.created_at
    [second_start] = of_type(client.get_orchestration_history(iid), history.ExecutionStartedEvent)
    assert second_start.timestamp > first_start.timestamp


def test_restart_with_new_id(client):
    iid = new_id("restart-new")
    client.schedule_new_orchestration(shouts, input="copy me", instance_id=iid)
    assert_completed(wait_done(client, iid))

    new_iid = client.restart_orchestration(iid, restart_with_new_instance_id=True)
    assert new_iid and new_iid != iid

    copy = assert_completed(wait_done(client, new_iid))
    assert copy.name == "shouts"
    assert copy.get_input() == "copy me"
    assert copy.get_output() == "COPY ME!"
    original = client.get_orchestration_state(iid)
    assert original is not None
    assert_completed(original)


# ------------------------------------------------------------ rewind

_calls: Counter[tuple[str, str]] = Counter()
_calls_lock = threading.Lock()


def _count(instance_id: str, step: str) -> int:
    with _calls_lock:
        _calls[(instance_id, step)] += 1
        return _calls[(instance_id, step)]


@activity
def reliable_step(ctx: task.ActivityContext, _) -> str:
    return f"reliable ran {_count(ctx.orchestration_id, 'reliable')} time(s)"


@activity
def fails_on_first_call(ctx: task.ActivityContext, _) -> str:
    n = _count(ctx.orchestration_id, "flaky")
    if n == 1:
        raise ConnectionError("backend unavailable")
    return f"flaky succeeded on call {n}"


@orchestrator
def rewindable(ctx: task.OrchestrationContext, _):
    first = yield ctx.call_activity(reliable_step)
    second = yield ctx.call_activity(fails_on_first_call)
    return [first, second]


def test_rewind_failed_instance(client):
    iid = new_id("rewind")
    client.schedule_new_orchestration(rewindable, instance_id=iid)
    failed = wait_done(client, iid)
    assert failed.runtime_status == OrchestrationStatus.FAILED
    assert "backend unavailable" in failed.failure_details.message

    client.rewind_orchestration(iid, reason="backend is back")

    # wait_for_orchestration_completion could return the old FAILED state, so
    # wait for the status to become COMPLETED.
    state = assert_completed(wait_for_status(client, iid, OrchestrationStatus.COMPLETED))
    assert state.get_output() == ["reliable ran 1 time(s)", "flaky succeeded on call 2"]
    # Only the failed work ran again.
    assert _calls[(iid, "reliable")] == 1
    assert _calls[(iid, "flaky")] == 2

    events = client.get_orchestration_history(iid)
    assert "ExecutionRewoundEvent" in event_kinds(events)
    completed = of_type(events, history.ExecutionCompletedEvent)
    assert [e.orchestration_status for e in completed][-1] == OrchestrationStatus.COMPLETED.value
