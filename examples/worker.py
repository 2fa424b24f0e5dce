"""A worker that serves the quick start's `hello` orchestration until Ctrl-C, for starting it
over HTTP or from the CLI (see the README's HTTP quick start)."""

import threading

from durabletask import task, worker


def greet(ctx: task.ActivityContext, name: str) -> str:
    return f"Hello, {name}!"


def hello(ctx: task.OrchestrationContext, name):
    return (yield ctx.call_activity(greet, input=name or "Outrigger"))


w = worker.TaskHubGrpcWorker()  # localhost:4001
w.add_orchestrator(hello)
w.add_activity(greet)
w.start()
print("worker running; Ctrl-C to stop")
try:
    threading.Event().wait()
except KeyboardInterrupt:
    w.stop()
