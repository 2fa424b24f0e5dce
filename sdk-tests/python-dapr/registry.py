"""Orchestrators and activities of the suite, registered on the session's worker."""

from datetime import timedelta

from durabletask import task


def hello(ctx: task.ActivityContext, name: str) -> str:
    return f"Hello {name}!"


def plus_one(ctx: task.ActivityContext, n: int) -> int:
    return n + 1


def fails(ctx: task.ActivityContext, _):
    raise ValueError("kaboom")


def sequence(ctx: task.OrchestrationContext, _):
    out = []
    for city in ["Tokyo", "Seattle", "London"]:
        out.append((yield ctx.call_activity(hello, input=city)))
    return out


def fan_out(ctx: task.OrchestrationContext, n: int):
    results = yield task.when_all([ctx.call_activity(plus_one, input=i) for i in range(n)])
    return sum(results)


def catcher(ctx: task.OrchestrationContext, _):
    try:
        yield ctx.call_activity(fails)
    except task.TaskFailedError as e:
        return f"caught: {e}"
    return "no failure"


def thrower(ctx: task.OrchestrationContext, _):
    yield ctx.call_activity(fails)


def waiter(ctx: task.OrchestrationContext, _):
    ctx.set_custom_status("waiting")
    value = yield ctx.wait_for_external_event("go")
    return value


def approval(ctx: task.OrchestrationContext, seconds: float):
    event = ctx.wait_for_external_event("approve")
    timer = ctx.create_timer(timedelta(seconds=seconds))
    winner = yield task.when_any([event, timer])
    return "approved" if winner == event else "timed out"


def sleeper(ctx: task.OrchestrationContext, _):
    before = ctx.current_utc_datetime
    yield ctx.create_timer(timedelta(seconds=1))
    return (ctx.current_utc_datetime - before).total_seconds()


def child(ctx: task.OrchestrationContext, n: int):
    return (yield ctx.call_activity(plus_one, input=n))


def parent(ctx: task.OrchestrationContext, n: int):
    return (yield ctx.call_sub_orchestrator(child, input=n, instance_id=f"{ctx.instance_id}-child"))


def counter(ctx: task.OrchestrationContext, n: int):
    if n < 5:
        ctx.continue_as_new(n + 1)
        return None
    return n


def register(w):
    for fn in [sequence, fan_out, catcher, thrower, waiter, approval, sleeper, child, parent, counter]:
        w.add_orchestrator(fn)
    for fn in [hello, plus_one, fails]:
        w.add_activity(fn)
