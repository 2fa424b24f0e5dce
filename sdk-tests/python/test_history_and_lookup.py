"""Reading history back, and looking up instances that do not exist."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import grpc
import pytest

from durabletask import history, task
from durabletask.client import OrchestrationStatus

from helpers import (assert_completed, assert_history_consistent, event_kinds, new_id,
                     of_type, rpc_code, wait_done)
from registry import activity, orchestrator


@activity
def add_exclamation(ctx: task.ActivityContext, word: str) -> str:
    return word + "!"


@orchestrator
def exclaims_words(ctx: task.OrchestrationContext, words: list[str]):
    results = []
    for word in words:
        results.append((yield ctx.call_activity(add_exclamation, input=word)))
    return results


def test_history_read_back(client):
    iid = new_id("history")
    client.schedule_new_orchestration(exclaims_words, input=["alpha", "beta"], instance_id=iid)
    assert assert_completed(wait_done(client, iid)).get_output() == ["alpha!", "beta!"]

    events = client.get_orchestration_history(iid)
    kinds = event_kinds(events)
    assert kinds[:2] == ["OrchestratorStartedEvent", "ExecutionStartedEvent"], kinds

    started = events[1]
    assert started.name == "exclaims_words"
    assert json.loads(started.input) == ["alpha", "beta"]
    assert started.orchestration_instance is not None
    assert started.orchestration_instance.instance_id == iid

    scheduled = of_type(events, history.TaskScheduledEvent)
    completed = of_type(events, history.TaskCompletedEvent)
    assert [e.name for e in scheduled] == ["add_exclamation", "add_exclamation"]
    assert [json.loads(e.input) for e in scheduled] == ["alpha", "beta"]
    results = {e.task_scheduled_id: json.loads(e.result) for e in completed}
    assert results == {scheduled[0].event_id: "alpha!", scheduled[1].event_id: "beta!"}
    # Each completion comes after the event that scheduled it.
    for done in completed:
        earlier = events[:events.index(done)]
        assert done.task_scheduled_id in [e.event_id for e in of_type(earlier, history.TaskScheduledEvent)]

    [finished] = of_type(events, history.ExecutionCompletedEvent)
    assert finished.orchestration_status == OrchestrationStatus.COMPLETED.value
    assert json.loads(finished.result) == ["alpha!", "beta!"]

    # Every event carries a real timestamp. Events keep the time they happened
    # (an ExecutionStarted may predate the OrchestratorStarted of its episode),
    # but episodes are ordered and nothing completes before it was scheduled.
    assert all(e.timestamp > datetime(2020, 1, 1, tzinfo=timezone.utc) for e in events), events
    episodes = [e.timestamp for e in of_type(events, history.OrchestratorStartedEvent)]
    assert episodes == sorted(episodes)
    scheduled_at = {e.event_id: e.timestamp for e in scheduled}
    assert all(e.timestamp >= scheduled_at[e.task_scheduled_id] for e in completed)
    assert_history_consistent(iid, events)


def test_missing_instance_has_no_state(client):
    assert client.get_orchestration_state(new_id("never-created")) is None


def test_raise_event_to_missing_instance_is_not_found(client):
    with pytest.raises(grpc.RpcError) as error:
        client.raise_orchestration_event(new_id("never-created"), "greeting", data="anyone there?")
    assert rpc_code(error.value) == grpc.StatusCode.NOT_FOUND
