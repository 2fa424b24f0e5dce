"""Small helpers shared by the test modules."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from typing import Any, Callable, TypeVar

import grpc
from durabletask import history
from durabletask.client import OrchestrationState, OrchestrationStatus, TaskHubGrpcClient

T = TypeVar("T")

# Generous upper bound for one orchestration to finish; a healthy sidecar
# needs a fraction of a second for the small workflows used here.
COMPLETION_TIMEOUT = 30.0


def new_id(label: str) -> str:
    """A fresh instance id, readable in logs: '<label>-<32 hex chars>'."""
    return f"{label}-{uuid.uuid4().hex}"


def utc(value: datetime) -> datetime:
    """The SDK hands out naive datetimes that are in UTC; make them aware."""
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def now() -> datetime:
    return datetime.now(timezone.utc)


def wait_done(client: TaskHubGrpcClient, instance_id: str,
              timeout: float = COMPLETION_TIMEOUT) -> OrchestrationState:
    """Wait (server-side) until the instance is in a terminal state and return it."""
    state = client.wait_for_orchestration_completion(instance_id, timeout=timeout)
    assert state is not None, f"instance {instance_id} does not exist"
    return state


def assert_completed(state: OrchestrationState) -> OrchestrationState:
    assert state.runtime_status == OrchestrationStatus.COMPLETED, (
        f"{state.instance_id} is {state.runtime_status}, failure: {state.failure_details}")
    assert state.failure_details is None
    return state


def poll_until(probe: Callable[[], T], accept: Callable[[T], bool], *,
               timeout: float = COMPLETION_TIMEOUT, interval: float = 0.05,
               what: str = "condition") -> T:
    """Call `probe` until `accept(result)` holds, or fail after `timeout` seconds.

    Only for conditions the SDK offers no blocking wait for (a custom status
    appearing, a SUSPENDED status, a child instance being created...).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if accept(value):
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {value!r}")
        time.sleep(interval)


def wait_for_status(client: TaskHubGrpcClient, instance_id: str,
                    status: OrchestrationStatus, *, timeout: float = COMPLETION_TIMEOUT
                    ) -> OrchestrationState:
    state = poll_until(
        lambda: client.get_orchestration_state(instance_id),
        lambda s: s is not None and s.runtime_status == status,
        timeout=timeout, what=f"{instance_id} to be {status}")
    assert state is not None
    return state


def rpc_code(error: BaseException) -> grpc.StatusCode | None:
    code = getattr(error, "code", None)
    return code() if callable(code) else None


# ---------------------------------------------------------------- history

def of_type(events: list[history.HistoryEvent], kind: type) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


def event_kinds(events: list[history.HistoryEvent]) -> list[str]:
    return [type(e).__name__ for e in events]


def duplicates(values: list[Any]) -> list[Any]:
    return [v for v, n in Counter(values).items() if n > 1]


def assert_history_consistent(instance_id: str, events: list[history.HistoryEvent]) -> None:
    """No event recorded twice, and every completion matches something scheduled.

    Checks exactly one ExecutionStarted / ExecutionCompleted, unique ids for
    TaskScheduled, TimerCreated and SubOrchestrationInstanceCreated, one result
    per scheduled task, sub-orchestration and timer. Not for instances that
    use retry policies: the Python SDK schedules every retry of an activity
    under the id of its first attempt.
    """
    where = f"history of {instance_id}: {event_kinds(events)}"
    assert len(of_type(events, history.ExecutionStartedEvent)) == 1, where
    assert len(of_type(events, history.ExecutionCompletedEvent)) == 1, where

    scheduled = [e.event_id for e in of_type(events, history.TaskScheduledEvent)]
    assert not duplicates(scheduled), f"TaskScheduled ids repeated {duplicates(scheduled)}; {where}"
    task_results = ([e.task_scheduled_id for e in of_type(events, history.TaskCompletedEvent)]
                    + [e.task_scheduled_id for e in of_type(events, history.TaskFailedEvent)])
    assert not duplicates(task_results), f"task results repeated for {duplicates(task_results)}; {where}"
    assert set(task_results) <= set(scheduled), f"results for unscheduled tasks; {where}"

    timers = [e.event_id for e in of_type(events, history.TimerCreatedEvent)]
    assert not duplicates(timers), f"TimerCreated ids repeated {duplicates(timers)}; {where}"
    fired = [e.timer_id for e in of_type(events, history.TimerFiredEvent)]
    assert not duplicates(fired), f"TimerFired repeated for {duplicates(fired)}; {where}"
    assert set(fired) <= set(timers), f"TimerFired for unknown timers; {where}"

    subs = [e.event_id for e in of_type(events, history.SubOrchestrationInstanceCreatedEvent)]
    assert not duplicates(subs), f"sub-orchestrations created twice {duplicates(subs)}; {where}"
    sub_results = (
        [e.task_scheduled_id for e in of_type(events, history.SubOrchestrationInstanceCompletedEvent)]
        + [e.task_scheduled_id for e in of_type(events, history.SubOrchestrationInstanceFailedEvent)])
    assert not duplicates(sub_results), f"sub-orchestration results repeated; {where}"
    assert set(sub_results) <= set(subs), f"results for unknown sub-orchestrations; {where}"


def assert_history_complete(instance_id: str, events: list[history.HistoryEvent]) -> None:
    """`assert_history_consistent`, and nothing missing: every scheduled task, timer and
    sub-orchestration has exactly one result, and the one terminal event is a completion.

    For instances that ran to completion without retries, terminations or abandoned timers
    (a wait with a timeout leaves a timer that never fires).
    """
    assert_history_consistent(instance_id, events)
    where = f"history of {instance_id}: {event_kinds(events)}"
    assert not of_type(events, history.ExecutionTerminatedEvent), where

    scheduled = {e.event_id for e in of_type(events, history.TaskScheduledEvent)}
    results = ({e.task_scheduled_id for e in of_type(events, history.TaskCompletedEvent)}
               | {e.task_scheduled_id for e in of_type(events, history.TaskFailedEvent)})
    assert results == scheduled, f"tasks without a result: {sorted(scheduled - results)}; {where}"

    timers = {e.event_id for e in of_type(events, history.TimerCreatedEvent)}
    fired = {e.timer_id for e in of_type(events, history.TimerFiredEvent)}
    assert fired == timers, f"timers that never fired: {sorted(timers - fired)}; {where}"

    subs = {e.event_id for e in of_type(events, history.SubOrchestrationInstanceCreatedEvent)}
    sub_results = (
        {e.task_scheduled_id for e in of_type(events, history.SubOrchestrationInstanceCompletedEvent)}
        | {e.task_scheduled_id for e in of_type(events, history.SubOrchestrationInstanceFailedEvent)})
    assert sub_results == subs, f"sub-orchestrations without a result: {sorted(subs - sub_results)}; {where}"
