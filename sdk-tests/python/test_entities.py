"""Durable entities through the Python SDK: function and class entities, signals from the
client and from orchestrations, calls with results and failures, delete, critical sections,
queries, clean storage, and ordering of many signals.

Entities keep no blocking wait in the SDK, so state is polled (poll_until) where a test waits
for signals to be applied; calls from orchestrations are awaited through the orchestration.
"""

from __future__ import annotations

import json
import random
from datetime import timedelta
from typing import Any

from durabletask import entities, task
from durabletask.client import EntityQuery
from durabletask.entities import EntityInstanceId
from durabletask.internal import orchestrator_service_pb2 as pb
from google.protobuf import wrappers_pb2

from helpers import assert_completed, new_id, now, poll_until, wait_done
from registry import entity, orchestrator


# ---------------------------------------------------------------- entities


@entity
def counter(ctx: entities.EntityContext, value: Any):
    current = ctx.get_state(int, 0)
    if ctx.operation == "add":
        ctx.set_state(current + value)
    elif ctx.operation == "get":
        return current
    elif ctx.operation == "fail_after_add":
        ctx.set_state(current + value)
        raise ValueError(f"refusing to add {value}")
    elif ctx.operation == "delete":
        ctx.set_state(None)
    elif ctx.operation == "forward":
        # Entity -> entity signal, then an orchestration started by the entity.
        ctx.signal_entity(EntityInstanceId("counter", value["to"]), "add", value["amount"])
        ctx.schedule_new_orchestration("entity_started_flow", input=value["amount"], instance_id=value["flow_id"])
    else:
        raise ValueError(f"unknown operation {ctx.operation}")


@entity
def ledger(ctx: entities.EntityContext, value: Any):
    """Appends every input in arrival order."""
    items = ctx.get_state() or []  # untyped: a typed list read would split the JSON text
    items.append(value)
    ctx.set_state(items)


@entity
class Account(entities.DurableEntity):
    def deposit(self, amount: int) -> int:
        balance = self.get_state(int, 0) + amount
        self.set_state(balance)
        return balance

    def withdraw(self, amount: int) -> int:
        balance = self.get_state(int, 0)
        if amount > balance:
            raise ValueError(f"insufficient funds: {balance} < {amount}")
        self.set_state(balance - amount)
        return balance - amount

    def balance(self, _: Any = None) -> int:
        return self.get_state(int, 0)


# ---------------------------------------------------------------- orchestrations


@orchestrator
def entity_started_flow(ctx: task.OrchestrationContext, amount: int):
    return amount * 2


@orchestrator
def signal_and_call(ctx: task.OrchestrationContext, key: str):
    target = EntityInstanceId("counter", key)
    ctx.signal_entity(target, "add", 3)
    ctx.signal_entity(target, "add", 4)
    return (yield ctx.call_entity(target, "get"))


@orchestrator
def call_failing_operation(ctx: task.OrchestrationContext, key: str):
    target = EntityInstanceId("counter", key)
    yield ctx.call_entity(target, "add", 10)
    try:
        yield ctx.call_entity(target, "fail_after_add", 5)
        failure = None
    except Exception as e:  # EntityOperationFailedException
        failure = str(e)
    after = yield ctx.call_entity(target, "get")
    return {"failure": failure, "after": after}


@orchestrator
def transfer(ctx: task.OrchestrationContext, t: dict):
    source = EntityInstanceId("Account", t["from"])
    target = EntityInstanceId("Account", t["to"])
    with (yield ctx.lock_entities([source, target])):
        before = yield ctx.call_entity(source, "balance")
        amount = min(t["amount"], before)
        left = yield ctx.call_entity(source, "withdraw", amount)
        again = yield ctx.call_entity(source, "balance")
        yield ctx.call_entity(target, "deposit", amount)
    # Inside the lock nobody else touched the source: its balance moved by exactly our amount.
    return {"before": before, "left": left, "again": again, "amount": amount}


@orchestrator
def delayed_signal(ctx: task.OrchestrationContext, key: str):
    ctx.signal_entity(EntityInstanceId("counter", key), "add", 1,
                      signal_time=ctx.current_utc_datetime + timedelta(seconds=2))


# ---------------------------------------------------------------- helpers


def state_of(client, entity_id: EntityInstanceId, kind: type | None = int):
    meta = client.get_entity(entity_id, include_state=True)
    if meta is None:
        return None
    # Untyped reads come back as the JSON text.
    return meta.get_state(kind) if kind is not None else json.loads(meta.get_state())


def wait_state(client, entity_id: EntityInstanceId, expected: Any, kind: type = int):
    return poll_until(lambda: state_of(client, entity_id, kind), lambda s: s == expected,
                      what=f"{entity_id} to hold {expected!r}")


# ---------------------------------------------------------------- tests


def test_client_signals_a_function_entity_and_reads_its_state(client):
    eid = EntityInstanceId("counter", new_id("sig"))
    assert client.get_entity(eid) is None
    client.signal_entity(eid, "add", 5)
    client.signal_entity(eid, "add", 6)
    wait_state(client, eid, 11)
    meta = client.get_entity(eid, include_state=False)
    assert meta is not None and meta.id == eid
    assert meta.backlog_queue_size == 0
    # The name is case-insensitive: the same entity under another spelling.
    assert state_of(client, EntityInstanceId("COUNTER", eid.key)) == 11


def test_orchestration_signals_and_calls_an_entity(client):
    key = new_id("orch")
    iid = client.schedule_new_orchestration(signal_and_call, input=key)
    state = assert_completed(wait_done(client, iid))
    # Signals and the call travel in the order sent: the call sees both signals applied.
    assert state.get_output() == 7
    assert state_of(client, EntityInstanceId("counter", key)) == 7


def test_a_failed_operation_fails_only_that_call_and_rolls_back_its_state(client):
    key = new_id("fail")
    iid = client.schedule_new_orchestration(call_failing_operation, input=key)
    out = assert_completed(wait_done(client, iid)).get_output()
    assert out["failure"] is not None and "refusing to add 5" in out["failure"], out
    assert out["after"] == 10, "the failed operation's change must not persist"
    assert state_of(client, EntityInstanceId("counter", key)) == 10


def test_class_entity_calls_return_results(client):
    key = new_id("acct")
    eid = EntityInstanceId("Account", key)
    client.signal_entity(eid, "deposit", 40)
    wait_state(client, eid, 40)
    iid = client.schedule_new_orchestration(
        transfer, input={"from": key, "to": new_id("acct-to"), "amount": 15})
    out = assert_completed(wait_done(client, iid)).get_output()
    assert out == {"before": 40, "left": 25, "again": 25, "amount": 15}


def test_deleting_the_state_makes_the_entity_disappear(client):
    eid = EntityInstanceId("counter", new_id("del"))
    client.signal_entity(eid, "add", 1)
    wait_state(client, eid, 1)
    client.signal_entity(eid, "delete")
    poll_until(lambda: client.get_entity(eid), lambda m: m is None, what=f"{eid} to be deleted")
    # Signalling it again brings it back from nothing.
    client.signal_entity(eid, "add", 2)
    wait_state(client, eid, 2)


def test_concurrent_transfers_in_critical_sections_conserve_the_total(client):
    prefix = new_id("bank")
    keys = [f"{prefix}-{i}" for i in range(4)]
    for k in keys:
        client.signal_entity(EntityInstanceId("Account", k), "deposit", 100)
    for k in keys:
        wait_state(client, EntityInstanceId("Account", k), 100)
    rng = random.Random(7)
    ids = []
    for _ in range(16):
        a, b = rng.sample(keys, 2)
        ids.append(client.schedule_new_orchestration(
            transfer, input={"from": a, "to": b, "amount": rng.randint(1, 60)}))
    for iid in ids:
        out = assert_completed(wait_done(client, iid, timeout=60)).get_output()
        assert out["left"] == out["before"] - out["amount"] == out["again"], out
    balances = [state_of(client, EntityInstanceId("Account", k)) for k in keys]
    assert sum(balances) == 400, balances
    assert all(b >= 0 for b in balances), balances
    for k in keys:
        meta = client.get_entity(EntityInstanceId("Account", k))
        assert meta is not None and meta.get_locked_by() is None, f"{k} is still locked"


def test_query_entities_by_prefix_with_paging(client):
    prefix = new_id("q")
    for i in range(7):
        client.signal_entity(EntityInstanceId("counter", f"{prefix}-{i}"), "add", i + 1)
    client.signal_entity(EntityInstanceId("counter", new_id("other")), "add", 1)
    for i in range(7):
        wait_state(client, EntityInstanceId("counter", f"{prefix}-{i}"), i + 1)

    found = client.get_all_entities(EntityQuery(instance_id_starts_with=f"@counter@{prefix}", page_size=3))
    assert sorted(m.id.key for m in found) == [f"{prefix}-{i}" for i in range(7)]
    assert sorted(m.get_state(int) for m in found) == list(range(1, 8))

    # One page at a time on the wire: three, a token, and the last page without one.
    stub = client._stub
    query = pb.EntityQuery(instanceIdStartsWith=wrappers_pb2.StringValue(value=f"@Counter@{prefix}"),
                           includeState=False, pageSize=wrappers_pb2.Int32Value(value=3))
    pages = []
    while True:
        resp = stub.QueryEntities(pb.QueryEntitiesRequest(query=query))
        pages.append([e.instanceId for e in resp.entities])
        assert all(not e.HasField("serializedState") for e in resp.entities)
        if not resp.HasField("continuationToken"):
            break
        query.continuationToken.CopyFrom(resp.continuationToken)
    assert [len(p) for p in pages] == [3, 3, 1]

    # Last-modified range: everything was modified before now, nothing after.
    later = client.get_all_entities(EntityQuery(instance_id_starts_with=f"@counter@{prefix}",
                                                last_modified_from=now() + timedelta(minutes=1)))
    assert later == []


def test_clean_entity_storage_keeps_entities_with_state(client):
    eid = EntityInstanceId("counter", new_id("clean"))
    client.signal_entity(eid, "add", 3)
    wait_state(client, eid, 3)
    result = client.clean_entity_storage()
    assert result.empty_entities_removed >= 0 and result.orphaned_locks_released >= 0
    assert state_of(client, eid) == 3


def test_an_entity_signals_another_and_starts_an_orchestration(client):
    to = new_id("to")
    flow_id = new_id("flow")
    client.signal_entity(EntityInstanceId("counter", new_id("from")), "forward",
                         {"to": to, "amount": 21, "flow_id": flow_id})
    wait_state(client, EntityInstanceId("counter", to), 21)
    state = assert_completed(wait_done(client, poll_until(
        lambda: flow_id if client.get_orchestration_state(flow_id) else None,
        lambda v: v is not None, what="the entity's orchestration to exist")))
    assert state.get_output() == 42


def test_signals_with_a_scheduled_time_wait_for_it(client):
    eid = EntityInstanceId("counter", new_id("later"))
    at = now() + timedelta(seconds=2)
    client.signal_entity(eid, "add", 1, signal_time=at)
    meta = client.get_entity(eid)
    assert meta is None, "a delayed signal must not run at once"
    wait_state(client, eid, 1)
    assert now() >= at

    key = new_id("later-orch")
    started = now()
    iid = client.schedule_new_orchestration(delayed_signal, input=key)
    assert_completed(wait_done(client, iid))
    assert state_of(client, EntityInstanceId("counter", key)) is None
    wait_state(client, EntityInstanceId("counter", key), 1)
    assert now() >= started + timedelta(seconds=2)


def test_500_signals_are_applied_exactly_once_in_order(client):
    eid = EntityInstanceId("ledger", new_id("many"))
    for i in range(500):
        client.signal_entity(eid, "append", i)
    items = poll_until(lambda: state_of(client, eid, None), lambda s: s is not None and len(s) >= 500,
                       timeout=120, what="500 signals to be applied")
    assert items == list(range(500))


def test_purge_removes_an_entity(client):
    eid = EntityInstanceId("counter", new_id("purge"))
    client.signal_entity(eid, "add", 9)
    wait_state(client, eid, 9)
    result = client.purge_orchestration(str(eid))
    assert result.deleted_instance_count == 1
    assert client.get_entity(eid) is None
    # Entities are not orchestrations: they never show up as instances.
    assert client.get_orchestration_state(str(eid)) is None
