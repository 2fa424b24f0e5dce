"""Continue-as-new: restarting an instance with new input, with and without saved events."""

from __future__ import annotations

import json

from durabletask import history, task

from helpers import assert_completed, new_id, of_type, wait_done
from registry import activity, orchestrator


@activity
def increment(ctx: task.ActivityContext, n: int) -> int:
    return n + 1


@orchestrator
def counts_up(ctx: task.OrchestrationContext, state: dict):
    value = yield ctx.call_activity(increment, input=state["value"])
    if value < state["target"]:
        ctx.continue_as_new({"value": value, "target": state["target"]})
        return None
    return {"value": value, "started_from": state["value"]}


def test_continue_as_new_counter(client):
    iid = new_id("counter")
    client.schedule_new_orchestration(counts_up, input={"value": 0, "target": 10}, instance_id=iid)

    state = assert_completed(wait_done(client, iid))
    # Ten executions, each adding one; the last one started from 9.
    assert state.get_output() == {"value": 10, "started_from": 9}
    assert state.get_input() == {"value": 9, "target": 10}

    # Only the final execution's history is kept.
    events = client.get_orchestration_history(iid)
    [started] = of_type(events, history.ExecutionStartedEvent)
    assert json.loads(started.input) == {"value": 9, "target": 10}
    assert len(of_type(events, history.TaskScheduledEvent)) == 1
    assert len(of_type(events, history.ExecutionCompletedEvent)) == 1


@orchestrator
def collects_items(ctx: task.OrchestrationContext, received: list):
    if not received:
        # First execution: hold on until the test has raised every item.
        yield ctx.wait_for_external_event("go")
    item = yield ctx.wait_for_external_event("item")
    received = received + [item]
    if len(received) == 3:
        return received
    # Items that arrived but were not consumed yet must follow us.
    ctx.continue_as_new(received, save_events=True)
    return None


def test_continue_as_new_keeps_unprocessed_events(client):
    iid = new_id("carry-over")
    client.schedule_new_orchestration(collects_items, input=[], instance_id=iid)
    for item in ("a", "b", "c"):
        client.raise_orchestration_event(iid, "item", data=item)
    client.raise_orchestration_event(iid, "go")

    # Without carry-over, "b" and "c" would be lost and this would time out.
    state = assert_completed(wait_done(client, iid))
    assert state.get_output() == ["a", "b", "c"]
    assert state.get_input() == ["a", "b"]
