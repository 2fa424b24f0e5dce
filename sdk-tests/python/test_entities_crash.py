"""SIGKILL the sidecar while entity signals are being applied, restart it on the same
database, and check every signal is applied exactly once, in order, and the state survives.

Uses its own outrigger process and worker. On Postgres the restarted sidecar takes the killed
one's entity leases over once they expire.
"""

from __future__ import annotations

import json
import signal

import pytest
from durabletask import entities
from durabletask.entities import EntityInstanceId

from database import new_database, on_postgres
from harness import new_client, new_worker, start_sidecar
from helpers import new_id, poll_until

COUNT = 1000
SIDECAR_ARGS = ["--lease-seconds", "3"] if on_postgres() else []


def crash_ledger(ctx: entities.EntityContext, value):
    items = ctx.get_state() or []
    items.append(value)
    ctx.set_state(items)


def start_worker(address: str, name: str):
    worker = new_worker(address, name)
    worker.add_entity(crash_ledger)
    worker.start()
    return worker


def items_of(client, eid):
    meta = client.get_entity(eid, include_state=True)
    return [] if meta is None else json.loads(meta.get_state())


@pytest.mark.timeout(240)
def test_entity_state_survives_sigkill_and_no_signal_is_applied_twice(tmp_path):
    db = new_database("entity-crash", tmp_path)
    eid = EntityInstanceId("crash_ledger", new_id("crash"))
    cleanup = [db.drop]
    try:
        first = start_sidecar("outrigger-entity-crash-1", db, SIDECAR_ARGS)
        cleanup.append(first.kill)
        client = new_client(first.address, "entity-crash-client-1")
        cleanup.append(client.close)
        # Every signal is acknowledged before the worker exists, so all of them are durable.
        for i in range(COUNT):
            client.signal_entity(eid, "append", i)
        worker = start_worker(first.address, "entity-crash-worker-1")
        cleanup.append(worker.stop)

        applied = poll_until(lambda: len(items_of(client, eid)), lambda n: n > 0, interval=0.01,
                             what="the first signals to be applied")
        first.kill()
        assert first.returncode == -signal.SIGKILL
        assert applied < COUNT, "everything was applied before the kill; nothing was interrupted"
        print(f"killed the sidecar with {applied}/{COUNT} signals applied")
        worker.stop()
        client.close()

        second = start_sidecar("outrigger-entity-crash-2", db, SIDECAR_ARGS)
        cleanup.append(second.kill)
        client = new_client(second.address, "entity-crash-client-2")
        cleanup.append(client.close)
        assert items_of(client, eid)[:applied] == list(range(applied)), "state lost in the crash"
        worker = start_worker(second.address, "entity-crash-worker-2")
        cleanup.append(worker.stop)
        items = poll_until(lambda: items_of(client, eid), lambda s: len(s) >= COUNT, timeout=120,
                           what="every signal to be applied")
        assert items == list(range(COUNT))
        second.stop()
    finally:
        for action in reversed(cleanup):
            try:
                action()
            except Exception:  # best-effort cleanup; the assertions above matter
                pass
