"""A 1 MB payload, and 200 orchestrations in flight at once."""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor

from durabletask import task
from durabletask.client import OrchestrationQuery, OrchestrationStatus

from helpers import assert_completed, new_id, wait_done
from registry import activity, orchestrator

ONE_MB = 1024 * 1024


@activity
def reverse_text(ctx: task.ActivityContext, text: str) -> str:
    return text[::-1]


@orchestrator
def reverses_payload(ctx: task.OrchestrationContext, text: str):
    reversed_text = yield ctx.call_activity(reverse_text, input=text)
    return {"length": len(reversed_text), "text": reversed_text}


def test_one_megabyte_payload_round_trip(client):
    iid = new_id("big-payload")
    payload = secrets.token_hex(ONE_MB // 2)  # 1 MiB of hex characters
    assert len(payload) == ONE_MB
    client.schedule_new_orchestration(reverses_payload, input=payload, instance_id=iid)

    state = assert_completed(wait_done(client, iid, timeout=60))
    assert state.get_input() == payload
    output = state.get_output()
    assert output["length"] == ONE_MB
    assert output["text"] == payload[::-1]


@activity
def double(ctx: task.ActivityContext, n: int) -> int:
    return 2 * n


@orchestrator
def doubles_then_adds(ctx: task.OrchestrationContext, n: int):
    doubled = yield ctx.call_activity(double, input=n)
    return doubled + 1


def test_two_hundred_orchestrations_at_once(client):
    prefix = new_id("many") + "-"
    ids = [f"{prefix}{n:03d}" for n in range(200)]

    def start(n: int) -> str:
        return client.schedule_new_orchestration(doubles_then_adds, input=n, instance_id=ids[n])

    with ThreadPoolExecutor(max_workers=16) as pool:
        assert list(pool.map(start, range(200))) == ids

    wrong = {}
    for n, iid in enumerate(ids):
        state = wait_done(client, iid, timeout=90)
        if state.runtime_status != OrchestrationStatus.COMPLETED or state.get_output() != 2 * n + 1:
            wrong[iid] = (state.runtime_status, state.serialized_output, state.failure_details)
    assert wrong == {}

    completed = client.get_all_orchestration_states(OrchestrationQuery(
        instance_id_prefix=prefix, runtime_status=[OrchestrationStatus.COMPLETED]))
    assert len(completed) == 200
