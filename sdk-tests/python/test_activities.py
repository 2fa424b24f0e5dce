"""Activities: sequences, fan-out/fan-in, failures and retries."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta

from durabletask import history, task
from durabletask.client import OrchestrationStatus

from helpers import assert_completed, new_id, of_type, wait_done
from registry import activity, orchestrator

# ------------------------------------------------------------ sequence


@activity
def say_hello(ctx: task.ActivityContext, name: str) -> str:
    return f"Hello {name}!"


@orchestrator
def hello_cities(ctx: task.OrchestrationContext, cities: list[str]):
    greetings = []
    for city in cities:
        greetings.append((yield ctx.call_activity(say_hello, input=city)))
    return greetings


def test_activity_sequence(client):
    iid = new_id("sequence")
    client.schedule_new_orchestration(hello_cities, input=["Tokyo", "Seattle", "London"], instance_id=iid)

    state = assert_completed(wait_done(client, iid))
    assert state.name == "hello_cities"
    assert state.get_input() == ["Tokyo", "Seattle", "London"]
    assert state.get_output() == ["Hello Tokyo!", "Hello Seattle!", "Hello London!"]

    events = client.get_orchestration_history(iid)
    assert [e.input for e in of_type(events, history.TaskScheduledEvent)] == ['"Tokyo"', '"Seattle"', '"London"']


# ------------------------------------------------------------ fan-out / fan-in


@activity
def square(ctx: task.ActivityContext, n: int) -> int:
    return n * n


@orchestrator
def squares_fan_out(ctx: task.OrchestrationContext, count: int):
    results = yield task.when_all([ctx.call_activity(square, input=i) for i in range(count)])
    return {"results": results, "sum": sum(results)}


def test_fan_out_fan_in_100_activities(client):
    iid = new_id("fan-out")
    client.schedule_new_orchestration(squares_fan_out, input=100, instance_id=iid)

    state = assert_completed(wait_done(client, iid, timeout=60))
    output = state.get_output()
    assert output["results"] == [i * i for i in range(100)]
    assert output["sum"] == sum(i * i for i in range(100))

    events = client.get_orchestration_history(iid)
    scheduled = {e.event_id for e in of_type(events, history.TaskScheduledEvent)}
    completed = [e.task_scheduled_id for e in of_type(events, history.TaskCompletedEvent)]
    assert len(scheduled) == 100
    assert sorted(completed) == sorted(scheduled)


# ------------------------------------------------------------ failures


@activity
def always_fails(ctx: task.ActivityContext, message: str) -> None:
    raise ValueError(message)


@orchestrator
def catches_activity_failure(ctx: task.OrchestrationContext, _):
    try:
        yield ctx.call_activity(always_fails, input="card declined")
    except task.TaskFailedError as error:
        return {"caught": True, "type": error.details.error_type, "message": error.details.message}
    return {"caught": False}


@orchestrator
def lets_activity_failure_escape(ctx: task.OrchestrationContext, _):
    yield ctx.call_activity(always_fails, input="disk on fire")
    return "unreachable"


def test_activity_failure_caught_by_orchestrator(client):
    iid = new_id("caught")
    client.schedule_new_orchestration(catches_activity_failure, instance_id=iid)

    state = assert_completed(wait_done(client, iid))
    assert state.get_output() == {"caught": True, "type": "builtins.ValueError", "message": "card declined"}

    events = client.get_orchestration_history(iid)
    [failed] = of_type(events, history.TaskFailedEvent)
    assert failed.failure_details.error_type == "builtins.ValueError"
    assert failed.failure_details.message == "card declined"


def test_uncaught_activity_failure_fails_instance(client):
    iid = new_id("uncaught")
    client.schedule_new_orchestration(lets_activity_failure_escape, instance_id=iid)

    state = wait_done(client, iid)
    assert state.runtime_status == OrchestrationStatus.FAILED
    assert state.get_output() is None
    details = state.failure_details
    assert details is not None
    assert details.error_type == "durabletask.task.TaskFailedError"
    assert "disk on fire" in details.message
    # The activity's own failure travels as the inner failure.
    assert details.inner_failure is not None
    assert details.inner_failure.error_type == "builtins.ValueError"
    assert details.inner_failure.message == "disk on fire"

    [completed] = of_type(client.get_orchestration_history(iid), history.ExecutionCompletedEvent)
    assert completed.orchestration_status == OrchestrationStatus.FAILED.value
    assert completed.failure_details is not None
    assert completed.failure_details.error_type == "durabletask.task.TaskFailedError"


# ------------------------------------------------------------ retries

_attempts: Counter[str] = Counter()
_attempts_lock = threading.Lock()


@activity
def fails_twice_then_succeeds(ctx: task.ActivityContext, key: str) -> str:
    with _attempts_lock:
        _attempts[key] += 1
        attempt = _attempts[key]
    if attempt <= 2:
        raise RuntimeError(f"transient failure on attempt {attempt}")
    return f"succeeded on attempt {attempt}"


@orchestrator
def retries_flaky_activity(ctx: task.OrchestrationContext, max_attempts: int):
    policy = task.RetryPolicy(
        first_retry_interval=timedelta(milliseconds=300),
        max_number_of_attempts=max_attempts,
        backoff_coefficient=1.0,
    )
    return (yield ctx.call_activity(fails_twice_then_succeeds, input=ctx.instance_id, retry_policy=policy))


def test_retry_policy_retries_until_success(client):
    iid = new_id("retry")
    client.schedule_new_orchestration(retries_flaky_activity, input=5, instance_id=iid)

    state = assert_completed(wait_done(client, iid))
    assert state.get_output() == "succeeded on attempt 3"
    assert _attempts[iid] == 3

    events = client.get_orchestration_history(iid)
    assert len(of_type(events, history.TaskScheduledEvent)) == 3
    assert len(of_type(events, history.TaskFailedEvent)) == 2
    assert len(of_type(events, history.TaskCompletedEvent)) == 1
    # The SDK waits between attempts with durable timers.
    assert len(of_type(events, history.TimerFiredEvent)) == 2


def test_retry_policy_gives_up_after_max_attempts(client):
    iid = new_id("retry-exhausted")
    client.schedule_new_orchestration(retries_flaky_activity, input=2, instance_id=iid)

    state = wait_done(client, iid)
    assert state.runtime_status == OrchestrationStatus.FAILED
    assert _attempts[iid] == 2
    assert state.failure_details is not None
    assert "transient failure on attempt 2" in state.failure_details.message


@orchestrator
def flaky_child(ctx: task.OrchestrationContext, key: str):
    # No retry here: the child fails as a whole and the parent retries it.
    return (yield ctx.call_activity(fails_twice_then_succeeds, input=key))


@orchestrator
def retries_flaky_child(ctx: task.OrchestrationContext, _):
    policy = task.RetryPolicy(first_retry_interval=timedelta(milliseconds=300), max_number_of_attempts=5)
    return (yield ctx.call_sub_orchestrator(flaky_child, input=ctx.instance_id,
                                            instance_id=f"{ctx.instance_id}:child", retry_policy=policy))


def test_retry_policy_retries_failed_sub_orchestration(client):
    iid = new_id("retry-child")
    client.schedule_new_orchestration(retries_flaky_child, instance_id=iid)

    state = assert_completed(wait_done(client, iid))
    assert state.get_output() == "succeeded on attempt 3"
    assert _attempts[iid] == 3
    events = client.get_orchestration_history(iid)
    assert len(of_type(events, history.SubOrchestrationInstanceFailedEvent)) == 2
    assert len(of_type(events, history.SubOrchestrationInstanceCompletedEvent)) == 1
