"""Sub-orchestrations: results, parent links, failures."""

from __future__ import annotations

from durabletask import history, task
from durabletask.client import OrchestrationStatus

from helpers import assert_completed, new_id, of_type, wait_done
from registry import activity, orchestrator


@activity
def triple(ctx: task.ActivityContext, n: int) -> int:
    return 3 * n


@orchestrator
def child_triples(ctx: task.OrchestrationContext, n: int):
    tripled = yield ctx.call_activity(triple, input=n)
    return {"child": ctx.instance_id, "parent": ctx.parent_instance_id, "value": tripled}


@orchestrator
def parent_of_three(ctx: task.OrchestrationContext, _):
    children = [
        ctx.call_sub_orchestrator(child_triples, input=n, instance_id=f"{ctx.instance_id}:child-{n}")
        for n in (1, 2, 3)
    ]
    results = yield task.when_all(children)
    return {"total": sum(r["value"] for r in results), "children": results}


@orchestrator
def child_that_fails(ctx: task.OrchestrationContext, _):
    raise KeyError("missing inventory")


@orchestrator
def parent_catches_child_failure(ctx: task.OrchestrationContext, _):
    try:
        yield ctx.call_sub_orchestrator(child_that_fails, instance_id=f"{ctx.instance_id}:child")
    except task.TaskFailedError as error:
        return {"caught": error.details.error_type, "message": error.details.message}
    return "child did not fail"


def test_sub_orchestrations_return_results_to_parent(client):
    iid = new_id("parent")
    client.schedule_new_orchestration(parent_of_three, instance_id=iid)

    state = assert_completed(wait_done(client, iid))
    output = state.get_output()
    assert output["total"] == 3 + 6 + 9
    assert output["children"] == [
        {"child": f"{iid}:child-{n}", "parent": iid, "value": 3 * n} for n in (1, 2, 3)
    ]

    for n in (1, 2, 3):
        child_id = f"{iid}:child-{n}"
        child = client.get_orchestration_state(child_id)
        assert child is not None, f"child {child_id} not found"
        assert_completed(child)
        assert child.name == "child_triples"
        assert child.get_input() == n

        [started] = of_type(client.get_orchestration_history(child_id), history.ExecutionStartedEvent)
        assert started.parent_instance is not None
        assert started.parent_instance.orchestration_instance.instance_id == iid

    parent_events = client.get_orchestration_history(iid)
    created = of_type(parent_events, history.SubOrchestrationInstanceCreatedEvent)
    done = of_type(parent_events, history.SubOrchestrationInstanceCompletedEvent)
    assert sorted(e.instance_id for e in created) == [f"{iid}:child-{n}" for n in (1, 2, 3)]
    assert sorted(e.task_scheduled_id for e in done) == sorted(e.event_id for e in created)


def test_sub_orchestration_failure_reaches_parent(client):
    iid = new_id("parent-of-failing")
    client.schedule_new_orchestration(parent_catches_child_failure, instance_id=iid)

    state = assert_completed(wait_done(client, iid))
    output = state.get_output()
    assert output["caught"] == "builtins.KeyError"
    assert "missing inventory" in output["message"]

    child = client.get_orchestration_state(f"{iid}:child")
    assert child is not None
    assert child.runtime_status == OrchestrationStatus.FAILED
    assert child.failure_details is not None
    assert child.failure_details.error_type == "builtins.KeyError"
