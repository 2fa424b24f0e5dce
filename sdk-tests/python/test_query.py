"""Querying instances: status, creation-time and id-prefix filters, paging."""

from __future__ import annotations

import uuid
from datetime import timedelta

import grpc
import pytest
from durabletask import task
from durabletask.client import OrchestrationQuery, OrchestrationStatus
from durabletask.internal import orchestrator_service_pb2 as pb
from durabletask.internal import orchestrator_service_pb2_grpc as stubs
from google.protobuf import wrappers_pb2

from helpers import assert_completed, now, utc, wait_done
from registry import orchestrator


@orchestrator
def query_target_done(ctx: task.OrchestrationContext, value):
    return value


@orchestrator
def query_target_waiting(ctx: task.OrchestrationContext, _):
    return (yield ctx.wait_for_external_event("release"))


@pytest.fixture(scope="module")
def population(client):
    """Three completed and two running instances sharing a unique id prefix.

    The completed ones are all created before `boundary`, the running ones after.
    """
    prefix = f"query-{uuid.uuid4().hex[:12]}-"
    done = [f"{prefix}done-{n}" for n in range(3)]
    running = [f"{prefix}running-{n}" for n in range(2)]
    before = now() - timedelta(milliseconds=1)
    for n, iid in enumerate(done):
        client.schedule_new_orchestration(query_target_done, input={"n": n}, instance_id=iid)
    last_done_created = max(utc(assert_completed(wait_done(client, iid)).created_at) for iid in done)
    # The sidecar may keep creation times in whole milliseconds (and compare
    # query bounds at that precision), so keep the boundary a full millisecond
    # away from every creation time on both sides. Spinning on the clock for at
    # most a couple of milliseconds is not waiting on the sidecar.
    boundary = last_done_created + timedelta(milliseconds=1)
    while now() < boundary + timedelta(milliseconds=1):
        pass
    for iid in running:
        client.schedule_new_orchestration(query_target_waiting, instance_id=iid)
    for iid in running:
        client.wait_for_orchestration_start(iid, timeout=30)
    after = now() + timedelta(milliseconds=1)

    yield {"prefix": prefix, "done": done, "running": running,
           "before": before, "boundary": boundary, "after": after}

    for iid in running:
        client.terminate_orchestration(iid)
        wait_done(client, iid)


def ids(states) -> list[str]:
    return sorted(s.instance_id for s in states)


def test_query_by_instance_id_prefix(client, population):
    states = client.get_all_orchestration_states(
        OrchestrationQuery(instance_id_prefix=population["prefix"]))
    assert ids(states) == sorted(population["done"] + population["running"])
    for state in states:
        assert state.name in ("query_target_done", "query_target_waiting")


def test_instance_id_prefix_is_literal(client):
    tag = uuid.uuid4().hex[:12]
    prefix = f"lit%_{tag}-"
    match = f"{prefix}match"
    decoys = [f"litXY{tag}-decoy",      # what '%' and '_' would match in a SQL LIKE
              f"x{prefix}decoy",        # contains the prefix, but not at the start
              f"LIT%_{tag}-decoy"]      # ids are case-sensitive
    for iid in [match] + decoys:
        client.schedule_new_orchestration(query_target_done, input=iid, instance_id=iid)
    for iid in [match] + decoys:
        assert_completed(wait_done(client, iid))

    states = client.get_all_orchestration_states(OrchestrationQuery(instance_id_prefix=prefix))
    assert ids(states) == [match]


def test_query_by_runtime_status(client, population):
    prefix = population["prefix"]
    running = client.get_all_orchestration_states(OrchestrationQuery(
        instance_id_prefix=prefix, runtime_status=[OrchestrationStatus.RUNNING]))
    assert ids(running) == sorted(population["running"])
    assert all(s.runtime_status == OrchestrationStatus.RUNNING for s in running)

    completed = client.get_all_orchestration_states(OrchestrationQuery(
        instance_id_prefix=prefix, runtime_status=[OrchestrationStatus.COMPLETED]))
    assert ids(completed) == sorted(population["done"])

    either = client.get_all_orchestration_states(OrchestrationQuery(
        instance_id_prefix=prefix,
        runtime_status=[OrchestrationStatus.COMPLETED, OrchestrationStatus.RUNNING]))
    assert len(either) == 5

    none = client.get_all_orchestration_states(OrchestrationQuery(
        instance_id_prefix=prefix, runtime_status=[OrchestrationStatus.FAILED]))
    assert none == []


def test_query_by_created_time_range(client, population):
    prefix = population["prefix"]
    early = client.get_all_orchestration_states(OrchestrationQuery(
        instance_id_prefix=prefix,
        created_time_from=population["before"], created_time_to=population["boundary"]))
    assert ids(early) == sorted(population["done"])

    late = client.get_all_orchestration_states(OrchestrationQuery(
        instance_id_prefix=prefix, created_time_from=population["boundary"]))
    assert ids(late) == sorted(population["running"])

    outside = client.get_all_orchestration_states(OrchestrationQuery(
        instance_id_prefix=prefix, created_time_from=population["after"]))
    assert outside == []


def test_query_fetches_inputs_and_outputs_only_on_request(client, population):
    prefix = population["prefix"]
    with_payloads = client.get_all_orchestration_states(OrchestrationQuery(
        instance_id_prefix=prefix, runtime_status=[OrchestrationStatus.COMPLETED],
        fetch_inputs_and_outputs=True))
    assert sorted((s.get_input()["n"], s.get_output()["n"]) for s in with_payloads) == [(0, 0), (1, 1), (2, 2)]

    without = client.get_all_orchestration_states(OrchestrationQuery(
        instance_id_prefix=prefix, runtime_status=[OrchestrationStatus.COMPLETED],
        fetch_inputs_and_outputs=False))
    assert len(without) == 3
    assert all(s.serialized_input is None and s.serialized_output is None for s in without)


def test_query_paging_with_continuation_token(client, population, sidecar):
    prefix = population["prefix"]
    expected = sorted(population["done"] + population["running"])

    # The SDK client follows continuation tokens by itself...
    paged = client.get_all_orchestration_states(
        OrchestrationQuery(instance_id_prefix=prefix, max_instance_count=2))
    assert ids(paged) == expected

    # ...so look at the pages on the wire too.
    channel = grpc.insecure_channel(sidecar.address)
    try:
        stub = stubs.TaskHubSidecarServiceStub(channel)
        seen: list[str] = []
        token = None
        pages = 0
        while True:
            query = pb.InstanceQuery(instanceIdPrefix=wrappers_pb2.StringValue(value=prefix),
                                     maxInstanceCount=2, continuationToken=token)
            response = stub.QueryInstances(pb.QueryInstancesRequest(query=query), timeout=10)
            pages += 1
            assert len(response.orchestrationState) <= 2
            seen += [s.instanceId for s in response.orchestrationState]
            if not response.HasField("continuationToken") or not response.continuationToken.value:
                break
            token = response.continuationToken
            assert pages < 10, "paging does not terminate"
    finally:
        channel.close()
    assert sorted(seen) == expected, "pages must neither repeat nor skip instances"
    assert pages >= 3


def test_list_instance_ids_pages_through_finished_instances(client, population):
    done = set(population["done"])
    seen: list[str] = []
    token = None
    for _ in range(1000):
        page = client.list_instance_ids(
            runtime_status=[OrchestrationStatus.COMPLETED],
            completed_time_from=population["before"],
            page_size=2, continuation_token=token)
        assert len(page.items) <= 2
        seen += page.items
        token = page.continuation_token
        if not token or not page.items:
            break
    assert not [i for i in set(seen) if seen.count(i) > 1], "an id was listed twice"
    assert done <= set(seen)
    assert not set(population["running"]) & set(seen), "running instances are not finished"
