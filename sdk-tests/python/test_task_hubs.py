"""Task hubs through the Python SDK, as an app configured for the scheduler's emulator
(`...;TaskHub=NAME`) uses them: the client and the worker send `taskhub: NAME` metadata on
every call, the work-item stream included. Each hub's worker stamps its results with its hub,
so a work item served by the wrong hub's worker shows in the output."""

from __future__ import annotations

import pytest
from durabletask import task
from durabletask.client import OrchestrationQuery, TaskHubGrpcClient
from durabletask.worker import TaskHubGrpcWorker

from harness import sdk_logger
from helpers import new_id, wait_done

HUBS = ("py-hub-a", "py-hub-b")


def stamped_greeting(ctx: task.OrchestrationContext, name):
    return (yield ctx.call_activity("hub_stamp", input=name))


def stamp_for(hub: str):
    def hub_stamp(_: task.ActivityContext, value):
        return f"{hub}:{value}"
    # The SDK registers a function by its name: each hub's worker has its own `hub_stamp`.
    return hub_stamp


@pytest.fixture(scope="module")
def hubs(sidecar):
    """(client, worker) per named hub; the workers run the same orchestration and activity
    names, each stamping its own hub."""
    pairs = {}
    for hub in HUBS:
        metadata = [("taskhub", hub)]
        worker = TaskHubGrpcWorker(host_address=sidecar.address, metadata=metadata,
                                   logger=sdk_logger(f"worker-{hub}"))
        worker.add_orchestrator(stamped_greeting)
        worker.add_activity(stamp_for(hub))
        worker.start()
        client = TaskHubGrpcClient(host_address=sidecar.address, metadata=metadata,
                                   logger=sdk_logger(f"client-{hub}"))
        pairs[hub] = (client, worker)
    yield {hub: client for hub, (client, _) in pairs.items()}
    for client, worker in pairs.values():
        worker.stop()
        client.close()


def test_the_same_instance_id_runs_in_each_hub_on_that_hubs_worker(hubs, client):
    iid = new_id("hubs")
    for hub in HUBS:
        hubs[hub].schedule_new_orchestration("stamped_greeting", input=hub.upper(), instance_id=iid)
    for hub in HUBS:
        state = wait_done(hubs[hub], iid)
        assert state.serialized_output == f'"{hub}:{hub.upper()}"'
    # The default hub (the suite's own client, no taskhub) has no such instance.
    assert client.get_orchestration_state(iid) is None


def test_queries_and_purges_stay_in_their_hub(hubs, client):
    a, b = (hubs[hub] for hub in HUBS)
    prefix = new_id("hubs-query")
    only_a, both = f"{prefix}-a", f"{prefix}-both"
    a.schedule_new_orchestration("stamped_greeting", input="1", instance_id=only_a)
    for c in (a, b):
        c.schedule_new_orchestration("stamped_greeting", input="2", instance_id=both)
    for c, iid in ((a, only_a), (a, both), (b, both)):
        wait_done(c, iid)

    def ids(c: TaskHubGrpcClient) -> set[str]:
        return {s.instance_id for s in c.get_all_orchestration_states(OrchestrationQuery(instance_id_prefix=prefix))}

    assert ids(a) == {only_a, both}
    assert ids(b) == {both}
    assert ids(client) == set()

    assert a.purge_orchestration(both).deleted_instance_count == 1
    assert a.get_orchestration_state(both) is None
    assert b.get_orchestration_state(both).serialized_output == '"py-hub-b:2"'


def test_an_app_set_up_for_the_scheduler_emulator_works_unchanged(sidecar, client):
    """The scheduler's own SDK package, configured as for its local emulator
    (`Endpoint=http://localhost:PORT;Authentication=None;TaskHub=mine`): plaintext, no token,
    `taskhub: mine` (and `workerid`) on every call."""
    from durabletask.azuremanaged.client import DurableTaskSchedulerClient
    from durabletask.azuremanaged.worker import DurableTaskSchedulerWorker

    endpoint = f"http://{sidecar.address}"
    worker = DurableTaskSchedulerWorker(host_address=endpoint, taskhub="mine", token_credential=None,
                                        secure_channel=False, logger=sdk_logger("worker-scheduler-app"))
    worker.add_orchestrator(stamped_greeting)
    worker.add_activity(stamp_for("mine"))
    worker.start()
    app = DurableTaskSchedulerClient(host_address=endpoint, taskhub="mine", token_credential=None,
                                     secure_channel=False, logger=sdk_logger("client-scheduler-app"))
    try:
        iid = app.schedule_new_orchestration(stamped_greeting, input="emulator")
        assert wait_done(app, iid).serialized_output == '"mine:emulator"'
        assert client.get_orchestration_state(iid) is None, "not in the default hub"
        assert app.purge_orchestration(iid).deleted_instance_count == 1
    finally:
        worker.stop()
        app.close()
