"""Three sidecars on one Postgres database, killed with SIGKILL and restarted while 500
orchestrations run through them: nothing is lost, nothing is recorded twice.

- sidecars A and B each serve one SDK worker; sidecar C serves only the client, so every
  orchestration, event and timer created through C must reach the workers through the database;
- each orchestration calls an activity, waits on a durable timer, runs a sub-orchestration that
  fans out to two activities, and waits for an external event the client raises through C;
- a chaos thread kills one sidecar at a time with SIGKILL at seeded random moments and restarts
  it on the same port and database a little later (`OUTRIGGER_SCALEOUT_SEED` replays a run);
- afterwards every instance's output is checked and its history read back: each task, timer and
  sub-orchestration has exactly one result, ExecutionStarted and the completion appear once.

Takeover time, as measured here: an activity still running on the worker of a sidecar when that
sidecar is killed cannot report its result (the sidecar is gone), and its lease keeps it from
everyone else until it expires. The time from the SIGKILL to the moment the same activity
(instance id, task id) starts again on a worker of a live sidecar is the takeover time. It is printed at the end
of the run and written to .results/scaleout.json (and to the test's tmp dir).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import statistics
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, TypeVar

import grpc
import pytest
from durabletask import history, task
from durabletask.client import OrchestrationStatus, TaskHubGrpcClient
from durabletask.worker import TaskHubGrpcWorker

from database import new_database, postgres_only
from harness import HERE, SUMMARY, new_client, new_worker, start_sidecar
from helpers import assert_history_complete, new_id, of_type, rpc_code
from sidecar import Sidecar, SidecarError

pytestmark = postgres_only

COUNT = int(os.environ.get("OUTRIGGER_SCALEOUT_COUNT", "500"))
LEASE_SECONDS = int(os.environ.get("OUTRIGGER_SCALEOUT_LEASE_SECONDS", "3"))
RUN_TIMEOUT = 300.0         # for all orchestrations to complete, chaos included
MAX_KILLS = 12
RESULTS_DIR = HERE / ".results"

T = TypeVar("T")


# ---------------------------------------------------------------- workload

def scale_child(ctx: task.OrchestrationContext, a: int):
    parts = yield task.when_all([ctx.call_activity("scale_step", input=a + i) for i in range(2)])
    return sum(parts)


def scale_flow(ctx: task.OrchestrationContext, n: int):
    a = yield ctx.call_activity("scale_step", input=n)
    yield ctx.create_timer(timedelta(seconds=1 + n % 3))
    b = yield ctx.call_sub_orchestrator(scale_child, input=a, instance_id=f"{ctx.instance_id}-child")
    e = yield ctx.wait_for_external_event("go")
    return {"n": n, "a": a, "b": b, "e": e}


def step(n: int) -> int:
    return 3 * n + 1


def expected_output(n: int) -> dict[str, int]:
    a = step(n)
    return {"n": n, "a": a, "b": step(a) + step(a + 1), "e": event_data(n)}


def event_data(n: int) -> int:
    return 7 * n


def work_seconds(n: int) -> float:
    # Activities take a little time, as real ones do, so that a kill finds some in progress.
    return 0.05 + (n % 7) * 0.04


@dataclass
class Execution:
    worker: str
    instance_id: str
    task_id: int
    started: float                 # time.monotonic()
    finished: float | None = None  # when the function returned; its result is reported after


class Recorder:
    """Every activity execution, by which worker, in this process's monotonic clock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.executions: list[Execution] = []

    def started(self, worker: str, ctx: task.ActivityContext) -> Execution:
        execution = Execution(worker, ctx.orchestration_id, ctx.task_id, time.monotonic())
        with self._lock:
            self.executions.append(execution)
        return execution

    def finished(self, execution: Execution) -> None:
        with self._lock:
            execution.finished = time.monotonic()

    def snapshot(self) -> list[Execution]:
        with self._lock:
            return [Execution(**vars(e)) for e in self.executions]


def start_worker(address: str, name: str, recorder: Recorder) -> TaskHubGrpcWorker:
    # One activity function per worker, so that each execution is recorded with where it ran.
    def scale_step(ctx: task.ActivityContext, n: int) -> int:
        execution = recorder.started(name, ctx)
        time.sleep(work_seconds(n))
        recorder.finished(execution)
        return step(n)

    worker = new_worker(address, name, quick_reconnect=True, concurrency=32)
    worker.add_orchestrator(scale_flow)
    worker.add_orchestrator(scale_child)
    worker.add_activity(scale_step)
    worker.start()
    return worker


# ---------------------------------------------------------------- chaos

@dataclass
class Kill:
    victim: str
    at: float           # monotonic time of the SIGKILL
    back_at: float = 0  # monotonic time the restarted sidecar logged its address


@dataclass
class Chaos:
    """Kills one sidecar at a time with SIGKILL and restarts it on the same port."""

    sidecars: dict[str, Sidecar]
    rng: random.Random
    kills: list[Kill] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    client_retries: int = 0  # client RPCs that met a dead sidecar C and were tried again
    _up: dict[str, threading.Event] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.sidecars:
            event = threading.Event()
            event.set()
            self._up[name] = event
        self._thread = threading.Thread(target=self._run, name="chaos", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def finish(self) -> None:
        """Stop killing and return once every sidecar is up again."""
        self.stop.set()
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "the chaos thread did not stop"

    def wait_up(self, name: str, timeout: float) -> bool:
        return self._up[name].wait(timeout)

    def _run(self) -> None:
        names = list(self.sidecars)
        order: list[str] = []
        while len(self.kills) < MAX_KILLS:
            if self.stop.wait(self.rng.uniform(1.0, 3.0)):
                return
            if not order:  # every sidecar is killed once per round, in a random order
                order = self.rng.sample(names, len(names))
            name = order.pop()
            sidecar = self.sidecars[name]
            self._up[name].clear()
            kill = Kill(name, time.monotonic())
            sidecar.kill()
            self.kills.append(kill)
            if sidecar.returncode != -signal.SIGKILL:
                self.errors.append(f"{name} ended with {sidecar.returncode}, not by SIGKILL")
            down_for = self.rng.uniform(0.3, 1.5)
            self.stop.wait(down_for)  # restarted even when asked to stop: the checks need it
            try:
                self._restart(sidecar)
            except SidecarError as e:
                self.errors.append(f"restarting {name}: {e}")
                return
            kill.back_at = time.monotonic()
            self._up[name].set()

    @staticmethod
    def _restart(sidecar: Sidecar) -> None:
        # The port was released by the kill; something else on the machine could take it in
        # between, so a failed start is retried for a few seconds before giving up.
        deadline = time.monotonic() + 10
        while True:
            try:
                sidecar.restart()
                return
            except SidecarError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)  # retry interval


# ---------------------------------------------------------------- client calls through sidecar C

def through(chaos: Chaos, name: str, call: Callable[[], T], what: str, timeout: float = 90.0,
            on_retry: Callable[[], None] | None = None) -> T:
    """Run a client RPC, retrying while the sidecar it goes through is down or restarting."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except grpc.RpcError as e:
            if rpc_code(e) != grpc.StatusCode.UNAVAILABLE:
                raise
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: sidecar {name} still unavailable after {timeout:.0f} s") from e
            chaos.client_retries += 1
            if on_retry is not None:
                on_retry()
            chaos.wait_up(name, max(0.0, deadline - time.monotonic()))
            time.sleep(0.05)  # retry interval while the channel reconnects to the restarted sidecar


def schedule(chaos: Chaos, client: TaskHubGrpcClient, iid: str, n: int) -> None:
    retried = False

    def attempt() -> None:
        try:
            client.schedule_new_orchestration(scale_flow, input=n, instance_id=iid)
        except grpc.RpcError as e:
            # A retry after a lost answer finds the instance the first attempt created.
            if not (retried and rpc_code(e) == grpc.StatusCode.ALREADY_EXISTS):
                raise

    def note_retry() -> None:
        nonlocal retried
        retried = True

    through(chaos, "C", attempt, f"schedule {iid}", on_retry=note_retry)


def wait_completed(chaos: Chaos, client: TaskHubGrpcClient, iid: str, deadline: float):
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        try:
            return through(chaos, "C", lambda: client.wait_for_orchestration_completion(
                iid, timeout=min(30.0, left)), f"wait for {iid}", timeout=left)
        except TimeoutError:
            continue


# ---------------------------------------------------------------- takeover

def takeover_samples(kills: list[Kill], executions: list[Execution], workers: dict[str, str]
                     ) -> list[dict[str, Any]]:
    """For each kill of a worker's sidecar: the activities running on that worker at the kill
    (started since the sidecar last came up, returned after the kill, so their result went to
    a dead sidecar) that ran again; seconds from the kill to the rerun's start.

    Activities that returned before the kill are left out even when they ran again: their
    result may have been refused for another reason, which is no takeover."""
    samples = []
    for i, kill in enumerate(kills):
        worker = workers.get(kill.victim)
        if worker is None:
            continue  # the client's sidecar holds no work items
        since = max((k.back_at for k in kills[:i] if k.victim == kill.victim), default=0.0)
        before = {(e.instance_id, e.task_id) for e in executions
                  if e.worker == worker and since <= e.started < kill.at
                  and e.finished is not None and e.finished >= kill.at}
        reruns: dict[tuple[str, int], Execution] = {}
        for e in executions:
            key = (e.instance_id, e.task_id)
            if key in before and e.started >= kill.at and (key not in reruns or e.started < reruns[key].started):
                reruns[key] = e
        for (iid, tid), e in sorted(reruns.items(), key=lambda kv: kv[1].started):
            samples.append({"kill": i, "victim": kill.victim, "instance_id": iid, "task_id": tid,
                            "rerun_on": e.worker, "by_survivor": e.worker != worker,
                            "seconds": round(e.started - kill.at, 3)})
    return samples


# ---------------------------------------------------------------- the test

@pytest.mark.timeout(600)
def test_three_sidecars_survive_sigkills(tmp_path: Path):
    seed = int(os.environ.get("OUTRIGGER_SCALEOUT_SEED", time.time_ns() % 2**32))
    print(f"scale-out seed {seed} (OUTRIGGER_SCALEOUT_SEED={seed} replays the chaos schedule)")
    rng = random.Random(seed)
    db = new_database("scaleout", tmp_path)
    args = ["--lease-seconds", str(LEASE_SECONDS)]
    sidecars = {name: start_sidecar(f"outrigger-scale-{name}", db, args) for name in ("A", "B", "C")}
    recorder = Recorder()
    workers_of = {"A": "worker-A", "B": "worker-B"}  # sidecar -> the worker connected to it
    workers = [start_worker(sidecars[s].address, w, recorder) for s, w in workers_of.items()]
    client = new_client(sidecars["C"].address, "scale-client", quick_reconnect=True)
    chaos = Chaos(sidecars, rng)

    prefix = new_id("scale")
    ids = [f"{prefix}-{n:03d}" for n in range(COUNT)]
    uncertain_raises: dict[str, int] = {}  # raise attempts that failed after possibly being applied
    try:
        began = time.monotonic()
        chaos.start()

        for n, iid in enumerate(ids):
            schedule(chaos, client, iid, n)

        for n in rng.sample(range(COUNT), COUNT):
            iid = ids[n]

            def count_uncertain(iid: str = iid) -> None:
                uncertain_raises[iid] = uncertain_raises.get(iid, 0) + 1
            through(chaos, "C", lambda: client.raise_orchestration_event(iid, "go", data=event_data(n)),
                    f"raise go on {iid}", on_retry=count_uncertain)

        wrong: dict[str, Any] = {}
        for n, iid in enumerate(ids):
            state = wait_completed(chaos, client, iid, began + RUN_TIMEOUT)
            if state is None:
                wrong[iid] = f"not completed {RUN_TIMEOUT:.0f} s after the start"
            elif state.runtime_status != OrchestrationStatus.COMPLETED or state.get_output() != expected_output(n):
                wrong[iid] = (str(state.runtime_status), state.serialized_output, state.failure_details)
        run_seconds = time.monotonic() - began
        kills_during_run = len(chaos.kills)
        chaos.finish()
        assert chaos.errors == [], chaos.errors
        assert wrong == {}, f"{len(wrong)} of {COUNT} orchestrations ended wrongly: {dict(list(wrong.items())[:5])}"

        # Histories, read through sidecar C once every sidecar is back.
        for n, iid in enumerate(ids):
            events = through(chaos, "C", lambda: client.get_orchestration_history(iid), f"history of {iid}")
            assert_history_complete(iid, events)
            assert len(of_type(events, history.TaskScheduledEvent)) == 1, iid
            assert len(of_type(events, history.TimerCreatedEvent)) == 1, iid
            assert [e.instance_id for e in of_type(events, history.SubOrchestrationInstanceCreatedEvent)] \
                == [f"{iid}-child"], iid
            raised = [e for e in of_type(events, history.EventRaisedEvent) if e.name == "go"]
            # Raised once, or again by a retry whose first attempt may have been applied.
            assert 1 <= len(raised) <= 1 + uncertain_raises.get(iid, 0), (iid, len(raised))

            child = f"{iid}-child"
            child_events = through(chaos, "C", lambda: client.get_orchestration_history(child),
                                   f"history of {child}")
            assert_history_complete(child, child_events)
            assert len(of_type(child_events, history.TaskScheduledEvent)) == 2, child

        samples = takeover_samples(chaos.kills, recorder.snapshot(), workers_of)
        report = takeover_report(seed, chaos, began, samples, run_seconds)
        report["sidecar_warnings"] = warnings_in([sc.log_path for sc in sidecars.values()])
        write_report(report, tmp_path)

        worker_kills = [k for k in chaos.kills if k.victim in workers_of]
        assert kills_during_run >= 3 and worker_kills, (
            f"the run ended after {kills_during_run} kills; too few to exercise takeover")
        assert samples, "no activity in progress on a killed sidecar was ever taken over"
    finally:
        chaos.stop.set()
        for w in workers:
            w.stop()
        client.close()
        for sc in sidecars.values():
            sc.kill()
        db.drop()


def takeover_report(seed: int, chaos: Chaos, began: float, samples: list[dict[str, Any]],
                    run_seconds: float) -> dict[str, Any]:
    first_per_kill: dict[int, float] = {}
    for s in samples:
        first_per_kill.setdefault(s["kill"], s["seconds"])

    def stats(seconds: list[float]) -> dict[str, Any]:
        return {"samples": len(seconds), "min": min(seconds, default=None),
                "median": round(statistics.median(seconds), 3) if seconds else None,
                "max": max(seconds, default=None)}

    return {
        "seed": seed,
        "orchestrations": COUNT,
        "lease_seconds": LEASE_SECONDS,
        "run_seconds": round(run_seconds, 2),
        "kills": [{"victim": k.victim, "at_seconds": round(k.at - began, 3),
                   "down_seconds": round(k.back_at - k.at, 3)} for k in chaos.kills],
        "client_retries": chaos.client_retries,
        "takeover_definition": "SIGKILL of a sidecar -> an activity that was running on its worker at the "
                               "kill (same instance id, task id) starts again on a worker of a live sidecar",
        "takeover_seconds": {
            **stats([s["seconds"] for s in samples]),
            "first_per_kill": list(first_per_kill.values()),
            # the rerun on the other worker's sidecar, not on the killed one once restarted
            "by_survivor": stats([s["seconds"] for s in samples if s["by_survivor"]]),
        },
        "takeover_samples": samples,
    }


def warnings_in(logs: list[Path]) -> dict[str, int]:
    """WARN and ERROR lines the sidecars logged, by message: expected ones (a worker's answer
    to a killed sidecar) and any that deserve a look, for the report."""
    counts: dict[str, int] = {}
    for log in logs:
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split(maxsplit=3)
            if len(parts) == 4 and parts[1] in ("WARN", "ERROR"):
                message = re.split(r" (?:error|instance_id|db\.statement)=", parts[3])[0][:120]
                key = f"{parts[1]} {parts[2]} {message}"
                if "deadlock detected" in line:
                    key += " (deadlock detected)"
                counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def write_report(report: dict[str, Any], tmp_path: Path) -> None:
    text = json.dumps(report, indent=2)
    (tmp_path / "scaleout.json").write_text(text)
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / "scaleout.json").write_text(text)
    t = report["takeover_seconds"]
    line = (f"scale-out: {report['orchestrations']} orchestrations on 3 sidecars in {report['run_seconds']} s "
            f"with {len(report['kills'])} SIGKILLs and {report['client_retries']} client retries "
            f"(seed {report['seed']}, lease {report['lease_seconds']} s); "
            f"takeover after kill -9: min {t['min']} s, median {t['median']} s, max {t['max']} s "
            f"over {t['samples']} activities ({t['by_survivor']['samples']} rerun by the surviving sidecar: "
            f"median {t['by_survivor']['median']} s); first per kill {t['first_per_kill']}; "
            f"{sum(report['sidecar_warnings'].values())} sidecar WARN/ERROR lines; "
            f"details in {RESULTS_DIR / 'scaleout.json'}")
    print(line)
    SUMMARY.append(line)
