"""The app behind the dashboard tests: a Python SDK worker and client against the sidecar at
argv[1], taking one JSON command per stdin line and answering one JSON line each on stdout.

    {"op": "start", "name": "sleepy", "id": "x", "input": ...}   -> {"id": "x"}
    {"op": "state", "id": "x"}                                      -> {"status": "COMPLETED" | null, "output": ...}
    {"op": "wait", "id": "x", "timeout": 30}                        -> the same, once it has finished
    {"op": "wait_running", "id": "x", "timeout": 30}                -> once it has started
    {"op": "raise", "id": "x", "event": "go", "data": ...}          -> {}
    {"op": "signal", "key": "k", "value": 5}                        -> {} (counter entity "add")
    {"op": "entity", "key": "k"}                                    -> {"state": 5 | null}

The orchestrations are small on purpose; `sleepy`'s activities report how long they really
ran, so the timeline can be checked against real durations.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import timedelta

from durabletask import client, entities, task, worker
from durabletask.entities import EntityInstanceId


def nap(ctx: task.ActivityContext, seconds: float) -> dict:
    began = time.time()
    time.sleep(seconds)
    return {"seconds": seconds, "ran_ms": (time.time() - began) * 1000}


def fail(ctx: task.ActivityContext, message: str) -> None:
    raise ValueError(message)


def hello(ctx: task.OrchestrationContext, name):
    return f"Hello, {name}!"


def sleepy(ctx: task.OrchestrationContext, _):
    ctx.set_custom_status("napping")
    short = yield ctx.call_activity(nap, input=0.4)
    long = yield ctx.call_activity(nap, input=1.2)
    yield ctx.create_timer(timedelta(seconds=0.5))
    ctx.set_custom_status("rested")
    return {"short": short, "long": long}


def failing(ctx: task.OrchestrationContext, message):
    yield ctx.call_activity(fail, input=message or "card declined")


def approval(ctx: task.OrchestrationContext, _):
    ctx.set_custom_status("waiting for approval")
    decision = yield ctx.wait_for_external_event("go")
    ctx.set_custom_status("approved")
    done = yield ctx.call_activity(nap, input=0.05)
    return {"decision": decision, "done": done}


def child(ctx: task.OrchestrationContext, n):
    return (yield ctx.call_activity(nap, input=0.05))


def parent(ctx: task.OrchestrationContext, _):
    return (yield ctx.call_sub_orchestrator(child, input=1, instance_id=f"{ctx.instance_id}-child"))


def counter(ctx: entities.EntityContext, value):
    if ctx.operation == "add":
        ctx.set_state(ctx.get_state(int, 0) + value)


ORCHESTRATORS = {f.__name__: f for f in (hello, sleepy, failing, approval, child, parent)}


def status_of(state) -> dict:
    if state is None:
        return {"status": None}
    return {
        "status": state.runtime_status.name,
        "output": state.serialized_output,
        "customStatus": state.serialized_custom_status,
    }


def main() -> None:
    address = sys.argv[1]
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    w = worker.TaskHubGrpcWorker(host_address=address)
    for o in ORCHESTRATORS.values():
        w.add_orchestrator(o)
    w.add_activity(nap)
    w.add_activity(fail)
    w.add_entity(counter)
    w.start()
    c = client.TaskHubGrpcClient(host_address=address)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        try:
            op = cmd["op"]
            if op == "start":
                fn = ORCHESTRATORS[cmd["name"]]
                answer = {"id": c.schedule_new_orchestration(fn, input=cmd.get("input"), instance_id=cmd.get("id"))}
            elif op == "state":
                answer = status_of(c.get_orchestration_state(cmd["id"]))
            elif op == "wait":
                answer = status_of(c.wait_for_orchestration_completion(cmd["id"], timeout=cmd.get("timeout", 30)))
            elif op == "wait_running":
                answer = status_of(c.wait_for_orchestration_start(cmd["id"], timeout=cmd.get("timeout", 30)))
            elif op == "raise":
                c.raise_orchestration_event(cmd["id"], cmd["event"], data=cmd.get("data"))
                answer = {}
            elif op == "signal":
                c.signal_entity(EntityInstanceId("counter", cmd["key"]), "add", cmd["value"])
                answer = {}
            elif op == "entity":
                meta = c.get_entity(EntityInstanceId("counter", cmd["key"]), include_state=True)
                answer = {"state": None if meta is None else meta.get_state(int)}
            elif op == "stop":
                break
            else:
                answer = {"error": f"unknown op {op}"}
        except Exception as e:  # reported to the test, which fails with it
            answer = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(answer), flush=True)
    w.stop()


if __name__ == "__main__":
    main()
