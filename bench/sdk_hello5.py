"""hello5 through the Python Durable Task SDK, as an application would run it.

One process holds both the SDK worker (five sequential no-op activities) and an asyncio
client that starts COUNT orchestrations, CONCURRENCY at a time, each timed from just before
schedule_new_orchestration to the return of wait_for_orchestration_completion.

Started by `outrigger-bench --workload sdk-hello5`, which measures the sidecar around it; it
prints one JSON object on stdout:
{"completed", "failed", "elapsed_s", "activities", "latencies_ms": [...], "errors": [...]}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
import uuid

from durabletask import client as dt_client
from durabletask import task
from durabletask.worker import ConcurrencyOptions, TaskHubGrpcWorker

CITIES = ["Tokyo", "Seattle", "London", "Lagos", "Lima"]


def noop(ctx: task.ActivityContext, city: str) -> str:
    return f"Hello {city}"


def hello5(ctx: task.OrchestrationContext, _input):
    greetings = []
    for city in CITIES:
        greetings.append((yield ctx.call_activity(noop, input=city)))
    return greetings


async def drive(address: str, count: int, concurrency: int, timeout: float) -> dict:
    quiet = logging.getLogger("bench-sdk")
    quiet.setLevel(logging.WARNING)
    client = dt_client.AsyncTaskHubGrpcClient(host_address=address, logger=quiet)
    slots = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    errors: list[str] = []
    prefix = f"sdk-hello5-{uuid.uuid4().hex[:8]}-"

    async def one(i: int) -> None:
        async with slots:
            started = time.perf_counter()
            try:
                instance_id = await client.schedule_new_orchestration(hello5, instance_id=f"{prefix}{i:07d}")
                state = await client.wait_for_orchestration_completion(instance_id, timeout=int(timeout))
                if state is None or state.runtime_status != dt_client.OrchestrationStatus.COMPLETED:
                    status = state.runtime_status.name if state else "missing"
                    errors.append(f"{instance_id} ended {status}")
                    return
                latencies.append((time.perf_counter() - started) * 1000.0)
            except Exception as e:  # any failure is counted, not fatal to the run
                errors.append(f"{type(e).__name__}: {e}")

    began = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    elapsed = time.perf_counter() - began
    await client.close()
    return {
        "completed": len(latencies),
        "failed": len(errors),
        "elapsed_s": elapsed,
        "activities": 5 * len(latencies),
        "latencies_ms": latencies,
        "errors": errors[:5],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True, help="host:port of the sidecar")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()

    quiet = logging.getLogger("bench-sdk-worker")
    quiet.setLevel(logging.WARNING)
    worker = TaskHubGrpcWorker(
        host_address=args.address,
        logger=quiet,
        concurrency_options=ConcurrencyOptions(maximum_thread_pool_workers=16),
    )
    worker.add_orchestrator(hello5)
    worker.add_activity(noop)
    worker.start()
    try:
        result = asyncio.run(drive(args.address, args.count, args.concurrency, args.timeout))
    finally:
        worker.stop()
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
