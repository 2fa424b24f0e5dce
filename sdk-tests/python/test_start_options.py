"""Starting instances: scheduled start, instance-id reuse, tags."""

from __future__ import annotations

from datetime import datetime, timedelta

import grpc
import pytest
from durabletask import history, task
from durabletask.client import OrchestrationStatus
from durabletask.internal import orchestrator_service_pb2 as pb

from helpers import assert_completed, new_id, now, of_type, rpc_code, utc, wait_done
from registry import orchestrator


@orchestrator
def reports_start_time(ctx: task.OrchestrationContext, _):
    return ctx.current_utc_datetime.isoformat()


@orchestrator
def holds_until_poked(ctx: task.OrchestrationContext, _):
    return (yield ctx.wait_for_external_event("poke"))


@orchestrator
def echoes(ctx: task.OrchestrationContext, value):
    return value


def test_scheduled_start(client):
    iid = new_id("scheduled")
    start_at = now() + timedelta(seconds=3)
    client.schedule_new_orchestration(reports_start_time, instance_id=iid, start_at=start_at)

    pending = client.get_orchestration_state(iid)
    assert pending is not None
    assert pending.runtime_status == OrchestrationStatus.PENDING

    state = assert_completed(wait_done(client, iid))
    first_time = utc(datetime.fromisoformat(state.get_output()))
    # Allow for timestamps stored with millisecond precision.
    assert first_time >= start_at - timedelta(milliseconds=1), (first_time, start_at)
    assert now() >= start_at

    [started] = of_type(client.get_orchestration_history(iid), history.ExecutionStartedEvent)
    assert started.scheduled_start_timestamp is not None
    assert abs(started.scheduled_start_timestamp - start_at) <= timedelta(milliseconds=1)


def test_duplicate_id_of_running_instance_is_rejected(client):
    iid = new_id("duplicate")
    client.schedule_new_orchestration(holds_until_poked, instance_id=iid)
    client.wait_for_orchestration_start(iid, timeout=30)

    with pytest.raises(grpc.RpcError) as error:
        client.schedule_new_orchestration(echoes, input="intruder", instance_id=iid)
    assert rpc_code(error.value) == grpc.StatusCode.ALREADY_EXISTS

    # The original instance is untouched.
    client.raise_orchestration_event(iid, "poke", data="original")
    state = assert_completed(wait_done(client, iid))
    assert state.name == "holds_until_poked"
    assert state.get_output() == "original"


def test_id_of_finished_instance_is_reused_by_default(client):
    iid = new_id("reuse")
    client.schedule_new_orchestration(echoes, input="first run", instance_id=iid)
    assert assert_completed(wait_done(client, iid)).get_output() == "first run"

    client.schedule_new_orchestration(reports_start_time, instance_id=iid)
    state = assert_completed(wait_done(client, iid))
    assert state.name == "reports_start_time"
    assert state.get_output() != "first run"


def test_reuse_policy_can_replace_running_instance(client):
    iid = new_id("replace-running")
    client.schedule_new_orchestration(holds_until_poked, instance_id=iid)
    client.wait_for_orchestration_start(iid, timeout=30)

    # Replacing a running instance terminates it, so TERMINATED must be replaceable too.
    policy = pb.OrchestrationIdReusePolicy(
        replaceableStatus=[pb.ORCHESTRATION_STATUS_RUNNING, pb.ORCHESTRATION_STATUS_TERMINATED])
    client.schedule_new_orchestration(echoes, input="replacement", instance_id=iid, reuse_id_policy=policy)

    state = assert_completed(wait_done(client, iid))
    assert state.name == "echoes"
    assert state.get_output() == "replacement"


def test_reuse_policy_replacing_live_instances_without_terminated_is_refused(client):
    iid = new_id("contradictory")
    client.schedule_new_orchestration(holds_until_poked, instance_id=iid)
    client.wait_for_orchestration_start(iid, timeout=30)

    policy = pb.OrchestrationIdReusePolicy(replaceableStatus=[pb.ORCHESTRATION_STATUS_RUNNING])
    with pytest.raises(grpc.RpcError) as error:
        client.schedule_new_orchestration(echoes, input="replacement", instance_id=iid, reuse_id_policy=policy)
    assert rpc_code(error.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert "TERMINATED" in error.value.details()
    state = client.get_orchestration_state(iid)
    assert state.name == "holds_until_poked"
    assert state.runtime_status == OrchestrationStatus.RUNNING
    client.terminate_orchestration(iid)


def test_reuse_policy_without_status_rejects(client):
    iid = new_id("policy-rejects")
    client.schedule_new_orchestration(echoes, input="kept", instance_id=iid)
    assert_completed(wait_done(client, iid))

    # COMPLETED is not among the replaceable statuses.
    policy = pb.OrchestrationIdReusePolicy(replaceableStatus=[pb.ORCHESTRATION_STATUS_FAILED])
    with pytest.raises(grpc.RpcError) as error:
        client.schedule_new_orchestration(echoes, input="rejected", instance_id=iid, reuse_id_policy=policy)
    assert rpc_code(error.value) == grpc.StatusCode.ALREADY_EXISTS
    assert client.get_orchestration_state(iid).get_output() == "kept"


def test_tags_are_recorded(client):
    iid = new_id("tags")
    client.schedule_new_orchestration(echoes, input=1, instance_id=iid,
                                      tags={"team": "payments", "priority": "high"})
    assert_completed(wait_done(client, iid))
    [started] = of_type(client.get_orchestration_history(iid), history.ExecutionStartedEvent)
    assert started.tags == {"team": "payments", "priority": "high"}
