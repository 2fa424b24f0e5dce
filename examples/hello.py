from durabletask import client, task, worker

def greet(ctx: task.ActivityContext, name: str) -> str:
    return f"Hello, {name}!"

def hello(ctx: task.OrchestrationContext, _):
    return (yield ctx.call_activity(greet, input="Outrigger"))

w = worker.TaskHubGrpcWorker()  # localhost:4001, like every SDK's default
w.add_orchestrator(hello); w.add_activity(greet); w.start()
c = client.TaskHubGrpcClient()
instance_id = c.schedule_new_orchestration(hello)
print(c.wait_for_orchestration_completion(instance_id, timeout=30).serialized_output)
w.stop()
