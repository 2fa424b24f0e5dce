"""Durable timers."""

from __future__ import annotations

from datetime import datetime, timedelta

from durabletask import history, task

from helpers import assert_completed, new_id, now, of_type, utc, wait_done
from registry import orchestrator


@orchestrator
def sleeps_on_timer(ctx: task.OrchestrationContext, seconds: float):
    before = ctx.current_utc_datetime
    fire_at = before + timedelta(seconds=seconds)
    yield ctx.create_timer(fire_at)
    after = ctx.current_utc_datetime
    return {"before": before.isoformat(), "fire_at": fire_at.isoformat(), "after": after.isoformat()}


def test_durable_timer_fires_and_time_advances(client):
    iid = new_id("timer")
    client.schedule_new_orchestration(sleeps_on_timer, input=2, instance_id=iid)

    state = assert_completed(wait_done(client, iid))
    observed_at = now()
    output = {k: utc(datetime.fromisoformat(v)) for k, v in state.get_output().items()}
    assert output["fire_at"] - output["before"] == timedelta(seconds=2)
    # The orchestration resumed no earlier than the timer was due (allowing for
    # timestamps stored with millisecond precision).
    slack = timedelta(milliseconds=1)
    assert output["after"] >= output["fire_at"] - slack, output
    assert observed_at >= output["fire_at"] - slack

    events = client.get_orchestration_history(iid)
    [created] = of_type(events, history.TimerCreatedEvent)
    [fired] = of_type(events, history.TimerFiredEvent)
    # Timestamps may be stored with millisecond precision.
    assert abs(created.fire_at - output["fire_at"]) <= timedelta(milliseconds=1)
    assert fired.timer_id == created.event_id
    assert abs(fired.fire_at - created.fire_at) <= timedelta(milliseconds=1)
    assert fired.timestamp >= created.fire_at - timedelta(milliseconds=1)
