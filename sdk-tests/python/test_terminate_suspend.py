"""Terminating (also recursively), suspending and resuming instances."""

from __future__ import annotations

import pytest
from durabletask import history, task
from durabletask.client import OrchestrationStatus

from helpers import (assert_completed, event_kinds, new_id, of_type, wait_done,
                     wait_for_status)
from registry import orchestrator


@orchestrator
def waits_forever(ctx: task.OrchestrationContext, _):
    yield ctx.wait_for_external_event("never-raised")
    return "should not finish"


@orchestrator
def parent_with_waiting_child(ctx: task.OrchestrationContext, _):
    yield ctx.call_sub_orchestrator(waits_forever, instance_id=f"{ctx.instance_id}:child")
    return "should not finish"


def test_terminate_running_instance(client):
    iid = new_id("terminate")
    client.schedule_new_orchestration(waits_forever, instance_id=iid)
    started = client.wait_for_orchestration_start(iid, timeout=30)
    assert started is not None and started.runtime_status == OrchestrationStatus.RUNNING

    client.terminate_orchestration(iid, output={"reason": "stopped by test"})

    state = wait_done(client, iid)
    assert state.runtime_status == OrchestrationStatus.TERMINATED
    assert state.get_output() == {"reason": "stopped by test"}
    events = client.get_orchestration_history(iid)
    assert len(of_type(events, history.ExecutionTerminatedEvent)) == 1, event_kinds(events)


def test_recursive_terminate_ends_child(client):
    iid = new_id("terminate-tree")
    child_id = f"{iid}:child"
    client.schedule_new_orchestration(parent_with_waiting_child, instance_id=iid)
    wait_for_status(client, child_id, OrchestrationStatus.RUNNING)

    client.terminate_orchestration(iid, output="tree cut down", recursive=True)

    parent = wait_done(client, iid)
    assert parent.runtime_status == OrchestrationStatus.TERMINATED
    assert parent.get_output() == "tree cut down"
    child = wait_done(client, child_id)
    assert child.runtime_status == OrchestrationStatus.TERMINATED


@orchestrator
def waits_for_data(ctx: task.OrchestrationContext, _):
    data = yield ctx.wait_for_external_event("data")
    return {"got": data}


def test_suspend_and_resume(client):
    iid = new_id("suspend")
    client.schedule_new_orchestration(waits_for_data, instance_id=iid)
    client.wait_for_orchestration_start(iid, timeout=30)

    client.suspend_orchestration(iid, reason="maintenance")
    wait_for_status(client, iid, OrchestrationStatus.SUSPENDED)

    # An event raised while suspended is held back...
    client.raise_orchestration_event(iid, "data", data=42)
    with pytest.raises(TimeoutError):
        client.wait_for_orchestration_completion(iid, timeout=2)
    state = client.get_orchestration_state(iid)
    assert state is not None and state.runtime_status == OrchestrationStatus.SUSPENDED

    # ...and delivered after resume.
    client.resume_orchestration(iid, reason="maintenance over")
    state = assert_completed(wait_done(client, iid))
    assert state.get_output() == {"got": 42}

    kinds = event_kinds(client.get_orchestration_history(iid))
    assert "ExecutionSuspendedEvent" in kinds and "ExecutionResumedEvent" in kinds, kinds
    assert kinds.index("ExecutionSuspendedEvent") < kinds.index("ExecutionResumedEvent")
