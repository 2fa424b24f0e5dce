"""Core scenarios of durabletask-dapr 0.17.4 (the older Dapr wire variant) on the Dapr
listener."""

import json
import time
import uuid

import pytest
from durabletask import client

import registry

S = client.OrchestrationStatus
T = 30


def run(c, fn, inp=None, instance_id=None):
    iid = c.schedule_new_orchestration(fn, input=inp, instance_id=instance_id)
    return iid, c.wait_for_orchestration_completion(iid, timeout=T)


def test_activity_sequence(c):
    _, s = run(c, registry.sequence)
    assert s.runtime_status == S.COMPLETED, s.failure_details
    assert json.loads(s.serialized_output) == ["Hello Tokyo!", "Hello Seattle!", "Hello London!"]


def test_fan_out_fan_in(c):
    _, s = run(c, registry.fan_out, 50)
    assert s.runtime_status == S.COMPLETED, s.failure_details
    assert json.loads(s.serialized_output) == sum(i + 1 for i in range(50))


def test_activity_failure_caught(c):
    _, s = run(c, registry.catcher)
    assert s.runtime_status == S.COMPLETED
    assert "kaboom" in json.loads(s.serialized_output)


def test_uncaught_activity_failure_fails_instance(c):
    _, s = run(c, registry.thrower)
    assert s.runtime_status == S.FAILED
    assert "kaboom" in s.failure_details.message


def test_external_event_and_custom_status(c):
    iid = c.schedule_new_orchestration(registry.waiter)
    c.wait_for_orchestration_start(iid, timeout=T)
    c.raise_orchestration_event(iid, "go", data="hi")
    s = c.wait_for_orchestration_completion(iid, timeout=T)
    assert json.loads(s.serialized_output) == "hi"
    assert "waiting" in s.serialized_custom_status


def test_wait_for_event_times_out(c):
    _, s = run(c, registry.approval, 0.5)
    assert json.loads(s.serialized_output) == "timed out"


def test_durable_timer(c):
    _, s = run(c, registry.sleeper)
    assert json.loads(s.serialized_output) >= 1


def test_sub_orchestration(c):
    iid = f"p-{uuid.uuid4().hex}"
    _, s = run(c, registry.parent, 1, instance_id=iid)
    assert json.loads(s.serialized_output) == 2
    assert c.get_orchestration_state(f"{iid}-child").runtime_status == S.COMPLETED


def test_continue_as_new(c):
    _, s = run(c, registry.counter, 0)
    assert json.loads(s.serialized_output) == 5


def test_terminate(c):
    iid = c.schedule_new_orchestration(registry.waiter)
    c.wait_for_orchestration_start(iid, timeout=T)
    c.terminate_orchestration(iid, output="stop")
    s = c.wait_for_orchestration_completion(iid, timeout=T)
    assert s.runtime_status == S.TERMINATED
    assert json.loads(s.serialized_output) == "stop"


def test_suspend_and_resume(c):
    iid = c.schedule_new_orchestration(registry.waiter)
    c.wait_for_orchestration_start(iid, timeout=T)
    c.suspend_orchestration(iid)
    # The suspend is recorded by a turn of the worker: poll the reported status.
    deadline = time.monotonic() + T
    while c.get_orchestration_state(iid).runtime_status != S.SUSPENDED:
        assert time.monotonic() < deadline, "never suspended"
        time.sleep(0.05)
    c.raise_orchestration_event(iid, "go", data=1)
    c.resume_orchestration(iid)
    s = c.wait_for_orchestration_completion(iid, timeout=T)
    assert json.loads(s.serialized_output) == 1


def test_purge(c):
    iid, s = run(c, registry.sequence)
    assert s.runtime_status == S.COMPLETED
    c.purge_orchestration(iid)
    assert c.get_orchestration_state(iid) is None


def test_missing_instance_has_no_state(c):
    assert c.get_orchestration_state("nobody-home") is None
