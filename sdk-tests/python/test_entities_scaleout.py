"""Postgres only: two sidecars on one database, an SDK worker on each, entity signals sent
through both, one sidecar killed with SIGKILL mid-run and restarted: every signal is applied
exactly once, each sender's signals in the order it sent them, and no entity is ever processed
by two workers at the same time.

Both workers live in this process, so the entity function can see whether another worker is
inside the same entity at the same moment.
"""

from __future__ import annotations

import json
import signal
import threading
from collections import Counter

import pytest
from durabletask import entities
from durabletask.entities import EntityInstanceId

from database import new_database, postgres_only
from harness import new_client, new_worker, start_sidecar
from helpers import new_id, poll_until

pytestmark = postgres_only

ENTITIES = 4
SIGNALS = 1000
SIDECAR_ARGS = ["--lease-seconds", "3"]

_guard = threading.Lock()
_inside: Counter[str] = Counter()
_overlaps: list[str] = []


def scale_tally(ctx: entities.EntityContext, value):
    key = ctx.entity_id.key
    with _guard:
        _inside[key] += 1
        if _inside[key] > 1:
            _overlaps.append(key)
    try:
        items = ctx.get_state() or []
        items.append(value)
        ctx.set_state(items)
    finally:
        with _guard:
            _inside[key] -= 1


def sender(value: int) -> int:
    return (value // ENTITIES) % 2


def start_worker(address: str, name: str):
    worker = new_worker(address, name, quick_reconnect=True)
    worker.add_entity(scale_tally)
    worker.start()
    return worker


def tallies(client, ids):
    out = {}
    for eid in ids:
        meta = client.get_entity(eid, include_state=True)
        out[eid.key] = [] if meta is None else json.loads(meta.get_state())
    return out


@pytest.mark.timeout(240)
def test_two_sidecars_apply_entity_signals_exactly_once_across_a_sigkill(tmp_path):
    db = new_database("entity-scaleout", tmp_path)
    prefix = new_id("tally")
    ids = [EntityInstanceId("scale_tally", f"{prefix}-{i}") for i in range(ENTITIES)]
    cleanup = [db.drop]
    try:
        a = start_sidecar("outrigger-entities-a", db, SIDECAR_ARGS)
        cleanup.append(a.kill)
        b = start_sidecar("outrigger-entities-b", db, SIDECAR_ARGS)
        cleanup.append(b.kill)
        clients = [new_client(a.address, "entities-client-a"), new_client(b.address, "entities-client-b")]
        cleanup.extend(c.close for c in clients)
        # Both senders reach every entity; each sender's values rise, so its order is checkable.
        for i in range(SIGNALS):
            clients[sender(i)].signal_entity(ids[i % ENTITIES], "append", i)
        workers = [start_worker(a.address, "entities-worker-a"), start_worker(b.address, "entities-worker-b")]
        cleanup.extend(w.stop for w in workers)

        reader = clients[1]
        applied = poll_until(lambda: sum(len(v) for v in tallies(reader, ids).values()), lambda n: n > 0,
                             interval=0.01, what="the first signals to be applied")
        a.kill()
        assert a.returncode == -signal.SIGKILL
        print(f"killed sidecar A with {applied}/{SIGNALS} signals applied")
        a.restart()

        final = poll_until(lambda: tallies(reader, ids), lambda t: sum(len(v) for v in t.values()) >= SIGNALS,
                           timeout=120, what="every signal to be applied")
        values = [v for items in final.values() for v in items]
        assert sorted(values) == list(range(SIGNALS)), "a signal was lost or applied twice"
        for i, eid in enumerate(ids):
            items = final[eid.key]
            assert sorted(items) == [v for v in range(SIGNALS) if v % ENTITIES == i], eid
            for s in (0, 1):
                sent = [v for v in items if sender(v) == s]
                assert sent and sent == sorted(sent), f"{eid}: sender {s}'s signals out of order"
        assert _overlaps == [], f"entities processed in two places at once: {_overlaps}"
        b.stop()
        a.stop()
    finally:
        for action in reversed(cleanup):
            try:
                action()
            except Exception:  # best-effort cleanup; the assertions above matter
                pass
