from durabletask import client, entities, task, worker

def counter(ctx: entities.EntityContext, amount):
    if ctx.operation == "add":
        ctx.set_state(ctx.get_state(int, 0) + amount)
    return ctx.get_state(int, 0)

def transfer(ctx: task.OrchestrationContext, amount):
    a, b = entities.EntityInstanceId("counter", "a"), entities.EntityInstanceId("counter", "b")
    with (yield ctx.lock_entities([a, b])):     # nobody else touches a or b in here
        yield ctx.call_entity(a, "add", -amount)
        yield ctx.call_entity(b, "add", amount)
    return (yield ctx.call_entity(b, "get"))

w = worker.TaskHubGrpcWorker()
w.add_entity(counter); w.add_orchestrator(transfer); w.start()
c = client.TaskHubGrpcClient()
c.signal_entity(entities.EntityInstanceId("counter", "a"), "add", 10)
iid = c.schedule_new_orchestration(transfer, input=3)
print(c.wait_for_orchestration_completion(iid, timeout=30).serialized_output)   # 3
print(c.get_entity(entities.EntityInstanceId("counter", "a")).get_state(int))     # 7
w.stop()
