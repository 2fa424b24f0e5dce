"""The HTTP listener with real SDK workers: an orchestration started over HTTP runs its
activities on the Python worker and is followed to its end by a plain HTTP poller; /metrics,
read with prometheus-client's text parser, moves by exactly what a known workload does."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from datetime import timedelta
from typing import Any

from durabletask import task
from prometheus_client.parser import text_string_to_metric_families

from database import new_database
from harness import new_client, new_worker, start_sidecar
from helpers import new_id, poll_until, wait_done
from registry import activity, orchestrator

BASE = "/runtime/webhooks/durabletask"


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None):
    """One request; returns (status, headers with lower-case names, parsed JSON body or text)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            status, head, raw = r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        status, head, raw = e.code, e.headers, e.read().decode()
    head = {k.lower(): v for k, v in head.items()}
    try:
        return status, head, json.loads(raw) if raw else None
    except json.JSONDecodeError:
        return status, head, raw


# ------------------------------------------------------------ started over HTTP


@activity
def http_shout(ctx: task.ActivityContext, word: str) -> str:
    return word.upper() + "!"


@orchestrator
def http_shouter(ctx: task.OrchestrationContext, words: list[str]):
    shouted = []
    for w in words:
        shouted.append((yield ctx.call_activity(http_shout, input=w)))
    return shouted


def test_an_orchestration_started_over_http_runs_on_the_sdk_worker(sidecar, client):
    base = f"http://{sidecar.http_address}{BASE}"
    iid = new_id("http-start")
    status, head, payload = http("POST", f"{base}/orchestrators/http_shouter/{iid}", ["durable", "task"])
    assert status == 202, payload
    assert payload["id"] == iid
    location = head["location"]
    assert location == payload["statusQueryGetUri"] == f"{base}/instances/{iid}"
    assert head["retry-after"] == "10"

    # A plain poller: follow Location while 202 (Retry-After scaled down for the test).
    polls = 0
    deadline = time.monotonic() + 30
    while True:
        status, head, body = http("GET", location)
        polls += 1
        if status == 200:
            break
        assert status == 202, body
        assert body["runtimeStatus"] in ("Pending", "Running")
        location = head["location"]
        assert time.monotonic() < deadline, "still running after 30 s"
        time.sleep(int(head["retry-after"]) / 100)
    assert body["runtimeStatus"] == "Completed"
    assert body["output"] == ["DURABLE!", "TASK!"]
    assert body["input"] == ["durable", "task"]

    # The SDK's client sees the same instance; the HTTP history shows the worker's activities.
    state = client.get_orchestration_state(iid)
    assert state.get_output() == ["DURABLE!", "TASK!"]
    _, _, full = http("GET", f"{base}/instances/{iid}?showHistory=true&showHistoryOutput=true")
    completed = [e for e in full["historyEvents"] if e["EventType"] == "TaskCompleted"]
    assert [(e["FunctionName"], e["Result"]) for e in completed] == [("http_shout", "DURABLE!"), ("http_shout", "TASK!")]


def test_start_and_wait_answers_with_the_output(sidecar, client):
    base = f"http://{sidecar.http_address}{BASE}"
    status, _, body = http("POST", f"{base}/orchestrators/http_shouter?timeout=20", ["wait"])
    assert status == 200, body
    assert body == ["WAIT!"]


# ------------------------------------------------------------ metrics


def scrape(address: str) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics by (name, sorted labels)."""
    status, head, text = http("GET", f"http://{address}/metrics")
    assert status == 200
    assert head["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def moved(before, after, name: str, **labels) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after[key] - before.get(key, 0.0)


def pair(ctx: task.ActivityContext, n: int) -> int:
    return n * 2


def two_steps(ctx: task.OrchestrationContext, n: int):
    a = yield ctx.call_activity(pair, input=n)
    b = yield ctx.call_activity(pair, input=a)
    return b


def breaks(ctx: task.OrchestrationContext, _):
    raise ValueError("on purpose")


def sleeper(ctx: task.OrchestrationContext, _):
    yield ctx.create_timer(timedelta(hours=1))


def test_metrics_move_by_what_the_workload_did(tmp_path):
    db = new_database("metrics", tmp_path)
    sc = start_sidecar("metrics", db, extra_args=["--http-port", "0"])
    w = new_worker(sc.address, "metrics-worker")
    for fn in (two_steps, breaks, sleeper):
        w.add_orchestrator(fn)
    w.add_activity(pair)
    c = new_client(sc.address, "metrics-client")
    try:
        w.start()
        # The worker's stream is open once the gauge says so (it connects in the background).
        poll_until(lambda: scrape(sc.http_address), lambda s: value(s, "outrigger_connected_workers") == 1,
                   timeout=30)
        before = scrape(sc.http_address)
        ids = [c.schedule_new_orchestration(two_steps, input=i) for i in range(3)]
        failed = c.schedule_new_orchestration(breaks)
        for iid in ids:
            assert wait_done(c, iid).get_output() in (0, 4, 8)
        wait_done(c, failed)
        timer = c.schedule_new_orchestration(sleeper)
        poll_until(lambda: scrape(sc.http_address), lambda s: value(s, "outrigger_timers_waiting") == 1, timeout=30)
        after = scrape(sc.http_address)

        assert moved(before, after, "outrigger_orchestrations_started_total") == 5
        assert moved(before, after, "outrigger_orchestrations_finished_total", status="completed") == 3
        assert moved(before, after, "outrigger_orchestrations_finished_total", status="failed") == 1
        assert moved(before, after, "outrigger_orchestrations_finished_total", status="terminated") == 0
        # Three steps per two_steps (start, after each activity), one for breaks and sleeper.
        assert moved(before, after, "outrigger_work_items_dispatched_total", kind="orchestration") == 11
        assert moved(before, after, "outrigger_work_items_completed_total", kind="orchestration") == 11
        assert moved(before, after, "outrigger_work_items_dispatched_total", kind="activity") == 6
        assert moved(before, after, "outrigger_work_items_completed_total", kind="activity") == 6
        assert moved(before, after, "outrigger_activity_duration_seconds_count") == 6
        assert moved(before, after, "outrigger_orchestration_step_duration_seconds_count") == 11
        assert moved(before, after, "outrigger_activity_duration_seconds_bucket", le="+Inf") == 6
        # Every answer is written in some commit: 11 steps and 6 activity results.
        assert moved(before, after, "outrigger_store_commit_batch_size_sum") == 17
        commits = moved(before, after, "outrigger_store_commit_batch_size_count")
        assert 1 <= commits <= 17
        assert moved(before, after, "outrigger_store_commit_duration_seconds_count") == commits
        assert value(after, "outrigger_backlog_work_items", kind="activity") == 0
        assert value(after, "outrigger_backlog_work_items", kind="orchestration") == 0
        assert value(after, "outrigger_expired_leases") == 0
        assert value(after, "outrigger_metrics_enabled") == 1

        c.terminate_orchestration(timer)
        wait_done(c, timer)
        final = scrape(sc.http_address)
        assert moved(after, final, "outrigger_orchestrations_finished_total", status="terminated") == 1
        assert value(final, "outrigger_timers_waiting") == 0
        status, _, _ = http("GET", f"http://{sc.http_address}/readyz")
        assert status == 200
    finally:
        w.stop()
        c.close()
        sc.stop()
        db.drop()


def test_metrics_can_be_turned_off(tmp_path):
    db = new_database("metrics-off", tmp_path)
    sc = start_sidecar("metrics-off", db, extra_args=["--http-port", "0", "--metrics=false"])
    w = new_worker(sc.address, "metrics-off-worker")
    w.add_orchestrator(two_steps)
    w.add_activity(pair)
    c = new_client(sc.address, "metrics-off-client")
    try:
        w.start()
        assert wait_done(c, c.schedule_new_orchestration(two_steps, input=1)).get_output() == 4
        s = scrape(sc.http_address)
        assert value(s, "outrigger_metrics_enabled") == 0
        assert value(s, "outrigger_orchestrations_started_total") == 0
        assert value(s, "outrigger_work_items_completed_total", kind="activity") == 0
    finally:
        w.stop()
        c.close()
        sc.stop()
        db.drop()
