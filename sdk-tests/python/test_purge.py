"""Purging instances: by id, recursively, by filter; running instances are not purged."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest
from durabletask import task
from durabletask.client import OrchestrationStatus

from helpers import assert_completed, new_id, now, wait_done
from registry import orchestrator


@orchestrator
def returns_input(ctx: task.OrchestrationContext, value):
    return value


@orchestrator
def blocks_until_released(ctx: task.OrchestrationContext, _):
    return (yield ctx.wait_for_external_event("release"))


@orchestrator
def parent_of_returns_input(ctx: task.OrchestrationContext, _):
    return (yield ctx.call_sub_orchestrator(returns_input, input="from child",
                                            instance_id=f"{ctx.instance_id}:child"))


def test_purge_completed_instance(client):
    iid = new_id("purge")
    client.schedule_new_orchestration(returns_input, input="bye", instance_id=iid)
    assert_completed(wait_done(client, iid))

    result = client.purge_orchestration(iid)

    assert result.deleted_instance_count == 1
    assert client.get_orchestration_state(iid) is None
    # A second purge finds nothing.
    assert client.purge_orchestration(iid).deleted_instance_count == 0


def test_purging_running_instance_fails(client):
    iid = new_id("purge-running")
    client.schedule_new_orchestration(blocks_until_released, instance_id=iid)
    client.wait_for_orchestration_start(iid, timeout=30)

    with pytest.raises(grpc.RpcError):
        client.purge_orchestration(iid)

    state = client.get_orchestration_state(iid)
    assert state is not None and state.runtime_status == OrchestrationStatus.RUNNING
    # The instance is intact and still works.
    client.raise_orchestration_event(iid, "release", data="released")
    assert assert_completed(wait_done(client, iid)).get_output() == "released"


def test_recursive_purge_removes_sub_orchestrations(client):
    iid = new_id("purge-tree")
    child_id = f"{iid}:child"
    client.schedule_new_orchestration(parent_of_returns_input, instance_id=iid)
    assert assert_completed(wait_done(client, iid)).get_output() == "from child"
    assert client.get_orchestration_state(child_id) is not None

    result = client.purge_orchestration(iid, recursive=True)

    assert result.deleted_instance_count == 2
    assert client.get_orchestration_state(iid) is None
    assert client.get_orchestration_state(child_id) is None


def test_purge_by_filter(client):
    window_start = now() - timedelta(milliseconds=1)
    done_ids = [new_id(f"purge-filter-{n}") for n in range(3)]
    for n, iid in enumerate(done_ids):
        client.schedule_new_orchestration(returns_input, input=n, instance_id=iid)
    running_id = new_id("purge-filter-running")
    client.schedule_new_orchestration(blocks_until_released, instance_id=running_id)
    for iid in done_ids:
        assert_completed(wait_done(client, iid))
    client.wait_for_orchestration_start(running_id, timeout=30)
    window_end = now() + timedelta(milliseconds=1)

    # Tests run one at a time, so only this test's instances were created in the window.
    result = client.purge_orchestrations_by(
        created_time_from=window_start, created_time_to=window_end,
        runtime_status=[OrchestrationStatus.COMPLETED])

    assert result.deleted_instance_count == 3
    for iid in done_ids:
        assert client.get_orchestration_state(iid) is None
    running = client.get_orchestration_state(running_id)
    assert running is not None and running.runtime_status == OrchestrationStatus.RUNNING
    client.terminate_orchestration(running_id)
    assert wait_done(client, running_id).runtime_status == OrchestrationStatus.TERMINATED
