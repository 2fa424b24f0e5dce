"""External events: raised early, timeouts, events between instances, custom status."""

from __future__ import annotations

from datetime import timedelta

from durabletask import history, task
from durabletask.client import OrchestrationStatus

from helpers import assert_completed, new_id, of_type, poll_until, wait_done
from registry import orchestrator


@orchestrator
def waits_for_two_events(ctx: task.OrchestrationContext, _):
    first = yield ctx.wait_for_external_event("first")
    second = yield ctx.wait_for_external_event("second")
    return [first, second]


def test_event_raised_before_orchestrator_waits_for_it(client):
    iid = new_id("early-event")
    client.schedule_new_orchestration(waits_for_two_events, instance_id=iid)
    client.wait_for_orchestration_start(iid, timeout=30)

    # "second" arrives while the orchestrator still waits for "first".
    client.raise_orchestration_event(iid, "second", data={"n": 2})
    client.raise_orchestration_event(iid, "first", data={"n": 1})

    state = assert_completed(wait_done(client, iid))
    assert state.get_output() == [{"n": 1}, {"n": 2}]
    raised = of_type(client.get_orchestration_history(iid), history.EventRaisedEvent)
    assert [e.name for e in raised] == ["second", "first"]


def test_event_raised_before_instance_starts(client):
    iid = new_id("event-before-start")
    client.schedule_new_orchestration(waits_for_two_events, instance_id=iid)
    # No wait for the start: the events may well reach a PENDING instance.
    client.raise_orchestration_event(iid, "first", data="a")
    client.raise_orchestration_event(iid, "second", data="b")

    state = assert_completed(wait_done(client, iid))
    assert state.get_output() == ["a", "b"]


@orchestrator
def approval_with_deadline(ctx: task.OrchestrationContext, timeout_seconds: float):
    approval = ctx.wait_for_external_event("approval")
    deadline = ctx.create_timer(timedelta(seconds=timeout_seconds))
    winner = yield task.when_any([approval, deadline])
    if winner is approval:
        return {"approved_by": approval.get_result()}
    return "timed out"


def test_wait_for_event_times_out(client):
    iid = new_id("event-timeout")
    client.schedule_new_orchestration(approval_with_deadline, input=1, instance_id=iid)

    state = assert_completed(wait_done(client, iid))
    assert state.get_output() == "timed out"
    events = client.get_orchestration_history(iid)
    assert len(of_type(events, history.TimerFiredEvent)) == 1
    assert of_type(events, history.EventRaisedEvent) == []


def test_event_beats_the_timeout(client):
    iid = new_id("event-in-time")
    client.schedule_new_orchestration(approval_with_deadline, input=30, instance_id=iid)
    client.wait_for_orchestration_start(iid, timeout=30)
    client.raise_orchestration_event(iid, "approval", data="alice")

    # Completes long before the 30 s timer; the timer firing later on a
    # completed instance must not disturb it.
    state = assert_completed(wait_done(client, iid, timeout=20))
    assert state.get_output() == {"approved_by": "alice"}


@orchestrator
def receives_greeting(ctx: task.OrchestrationContext, _):
    greeting = yield ctx.wait_for_external_event("greeting")
    return f"received: {greeting}"


@orchestrator
def sends_greeting(ctx: task.OrchestrationContext, target: str):
    ctx.send_event(target, "greeting", data=f"hello from {ctx.instance_id}")
    return "sent"


def test_send_event_between_instances(client):
    receiver = new_id("receiver")
    sender = new_id("sender")
    client.schedule_new_orchestration(receives_greeting, instance_id=receiver)
    client.wait_for_orchestration_start(receiver, timeout=30)
    client.schedule_new_orchestration(sends_greeting, input=receiver, instance_id=sender)

    assert assert_completed(wait_done(client, sender)).get_output() == "sent"
    assert assert_completed(wait_done(client, receiver)).get_output() == f"received: hello from {sender}"

    [sent] = of_type(client.get_orchestration_history(sender), history.EventSentEvent)
    assert sent.instance_id == receiver
    assert sent.name == "greeting"
    [raised] = of_type(client.get_orchestration_history(receiver), history.EventRaisedEvent)
    assert raised.name == "greeting"
    assert raised.input == f'"hello from {sender}"'


# ------------------------------------------------------------ custom status


@orchestrator
def reports_progress(ctx: task.OrchestrationContext, _):
    ctx.set_custom_status({"stage": "awaiting approval", "step": 1})
    approver = yield ctx.wait_for_external_event("approve")
    ctx.set_custom_status({"stage": "done", "step": 2})
    return approver


def test_custom_status_visible_while_waiting(client):
    iid = new_id("custom-status")
    client.schedule_new_orchestration(reports_progress, instance_id=iid)

    state = poll_until(
        lambda: client.get_orchestration_state(iid),
        lambda s: s is not None and s.serialized_custom_status is not None,
        what=f"custom status of {iid}")
    assert state.runtime_status == OrchestrationStatus.RUNNING
    assert state.get_custom_status() == {"stage": "awaiting approval", "step": 1}

    client.raise_orchestration_event(iid, "approve", data="bob")
    state = assert_completed(wait_done(client, iid))
    assert state.get_output() == "bob"
    assert state.get_custom_status() == {"stage": "done", "step": 2}
