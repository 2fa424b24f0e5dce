// Outrigger's SDK scenarios through @microsoft/durabletask-js, against a freshly started
// release binary. Prints one line per scenario and ends with "N passed, N failed".
"use strict";

const assert = require("node:assert/strict");
const path = require("node:path");
const { isDeepStrictEqual } = require("node:util");
const dt = require("@microsoft/durabletask-js");
const { startSidecar } = require("./sidecar");

const { OrchestrationStatus: S, whenAll, whenAny, RetryPolicy, terminateOptions, EntityInstanceId } = dt;
const LOG_DIR = path.join(__dirname, ".logs");
const TIMEOUT_S = 30;

// ---------------------------------------------------------------------------------------------
// Orchestrators and activities (registered by name on one worker)

const orchestrators = {};
const activities = {};

activities.Hello = (_ctx, name) => `Hello, ${name}!`;
activities.Double = (_ctx, n) => n * 2;
activities.Fail = (_ctx, why) => {
  throw new Error(`failing on purpose: ${why}`);
};
let flakyCalls = 0;
activities.Flaky = (_ctx, succeedOn) => {
  flakyCalls += 1;
  if (flakyCalls < succeedOn) throw new Error(`attempt ${flakyCalls} fails`);
  return flakyCalls;
};
activities.Echo = (_ctx, payload) => payload;

orchestrators.Sequence = async function* (ctx) {
  const out = [];
  for (const city of ["Tokyo", "Seattle", "London"]) out.push(yield ctx.callActivity("Hello", city));
  return out;
};
orchestrators.FanOut = async function* (ctx, n) {
  const tasks = [];
  for (let i = 0; i < n; i++) tasks.push(ctx.callActivity("Double", i));
  const results = yield whenAll(tasks);
  return results.reduce((a, b) => a + b, 0);
};
orchestrators.Parent = async function* (ctx, n) {
  const children = [];
  for (let i = 0; i < n; i++) {
    children.push(ctx.callSubOrchestrator("Child", i, { instanceId: `${ctx.instanceId}-child-${i}` }));
  }
  return yield whenAll(children);
};
orchestrators.Child = async function* (ctx, i) {
  return yield ctx.callActivity("Double", i);
};
orchestrators.Timer = async function* (ctx, ms) {
  const before = ctx.currentUtcDateTime.getTime();
  yield ctx.createTimer(new Date(before + ms));
  return ctx.currentUtcDateTime.getTime() - before;
};
orchestrators.Approval = async function* (ctx, timeoutMs) {
  const approval = ctx.waitForExternalEvent("Approval");
  const timeout = ctx.createTimer(new Date(ctx.currentUtcDateTime.getTime() + timeoutMs));
  const winner = yield whenAny([approval, timeout]);
  return winner === approval ? `approved by ${approval.getResult()}` : "timed out";
};
orchestrators.Counter = async function* (ctx, n) {
  if (n < 5) {
    ctx.continueAsNew(n + 1, false);
    return;
  }
  return n;
};
orchestrators.Forever = async function* (ctx) {
  yield ctx.waitForExternalEvent("never");
};
orchestrators.ForeverParent = async function* (ctx) {
  yield ctx.callSubOrchestrator("Forever", null, { instanceId: `${ctx.instanceId}-child` });
};
orchestrators.Suspendable = async function* (ctx) {
  const v = yield ctx.waitForExternalEvent("Go");
  return `went ${v}`;
};
orchestrators.CatchFailure = async function* (ctx) {
  try {
    yield ctx.callActivity("Fail", "caught");
    return "not reached";
  } catch (e) {
    return `caught: ${e.details ? e.details.message : e.message}`;
  }
};
orchestrators.Uncaught = async function* (ctx) {
  yield ctx.callActivity("Fail", "uncaught");
};
orchestrators.Retry = async function* (ctx, succeedOn) {
  const retry = new RetryPolicy({ maxNumberOfAttempts: 5, firstRetryIntervalInMilliseconds: 100 });
  return yield ctx.callActivity("Flaky", succeedOn, { retry });
};
orchestrators.CustomStatus = async function* (ctx) {
  ctx.setCustomStatus({ step: "waiting" });
  yield ctx.waitForExternalEvent("Continue");
  ctx.setCustomStatus({ step: "done" });
  return "ok";
};
orchestrators.Quick = async function* (_ctx, input) {
  return input;
};
orchestrators.Payload = async function* (ctx, payload) {
  return yield ctx.callActivity("Echo", payload);
};
orchestrators.Versioned = async function* (ctx) {
  return ctx.version;
};
orchestrators.FailOnce = async function* (ctx) {
  return yield ctx.callActivity("Flaky", 2);
};

// ---------------------------------------------------------------------------------------------
// Entities (registered by name on the same worker) and the orchestrations that use them

const entities = {};

// A function-style entity: one `run` that switches on the operation name.
entities.counter = () => ({
  run(op) {
    const current = op.state.getState(0);
    switch (op.name) {
      case "add":
        op.state.setState(current + op.getInput());
        return current + op.getInput();
      case "get":
        return current;
      case "failAfterAdd":
        // The change made before the throw must not survive: the operation is rolled back.
        op.state.setState(current + op.getInput());
        throw new Error(`refusing to add ${op.getInput()}`);
      case "delete":
        op.state.setState(null);
        return undefined;
      case "forward": {
        // An entity that signals another entity and starts an orchestration.
        const { to, amount, flowId } = op.getInput();
        op.context.signalEntity(new EntityInstanceId("counter", to), "add", amount);
        op.context.scheduleNewOrchestration("Quick", amount * 2, { instanceId: flowId });
        return undefined;
      }
      default:
        throw new Error(`unknown operation ${op.name}`);
    }
  },
});

// A class-style entity: public methods are its operations, `delete` is implicit.
class Account extends dt.TaskEntity {
  initializeState() {
    return 0;
  }
  deposit(amount) {
    this.state += amount;
    return this.state;
  }
  withdraw(amount) {
    if (amount > this.state) throw new Error(`insufficient funds: ${this.state} < ${amount}`);
    this.state -= amount;
    return this.state;
  }
  balance() {
    return this.state;
  }
}
entities.account = () => new Account();

// Appends every input, so the state shows how often and in what order operations ran.
entities.ledger = () => ({
  run(op) {
    op.state.setState([...op.state.getState([]), op.getInput()]);
  },
});

orchestrators.EntityCalls = async function* (ctx, key) {
  const id = new EntityInstanceId("counter", key);
  ctx.entities.signalEntity(id, "add", 1); // a signal, then calls: one sender, so in this order
  const added = yield ctx.entities.callEntity(id, "add", 4);
  let failure;
  try {
    yield ctx.entities.callEntity(id, "failAfterAdd", 100);
  } catch (e) {
    failure = {
      // 0.4.0 does not export EntityOperationFailedException from the package root: match by name.
      kind: e.name,
      operation: e.operationName,
      entity: e.entityId.toString(),
      message: e.failureDetails.errorMessage,
    };
  }
  const after = yield ctx.entities.callEntity(id, "get");
  return { added, failure, after };
};
orchestrators.UncaughtEntityFailure = async function* (ctx, key) {
  yield ctx.entities.callEntity(new EntityInstanceId("counter", key), "failAfterAdd", 1);
};
orchestrators.EntitySignals = async function* (ctx, key) {
  const id = new EntityInstanceId("counter", key);
  for (const n of [1, 2, 3]) ctx.entities.signalEntity(id, "add", n);
  const at = new Date(ctx.currentUtcDateTime.getTime() + 1000);
  ctx.entities.signalEntity(new EntityInstanceId("counter", `${key}-later`), "add", 10, { signalTime: at });
  return at.toISOString();
};
orchestrators.Transfer = async function* (ctx, { from, to, amount }) {
  const a = new EntityInstanceId("account", from);
  const b = new EntityInstanceId("account", to);
  const lock = yield ctx.entities.lockEntities(a, b);
  try {
    const before = [yield ctx.entities.callEntity(a, "balance"), yield ctx.entities.callEntity(b, "balance")];
    yield ctx.entities.callEntity(a, "withdraw", amount);
    yield ctx.entities.callEntity(b, "deposit", amount);
    const after = [yield ctx.entities.callEntity(a, "balance"), yield ctx.entities.callEntity(b, "balance")];
    return { before, after };
  } finally {
    lock.release();
  }
};
orchestrators.LockAndWait = async function* (ctx, key) {
  // Ends while holding the lock: the sidecar must release it when the holder completes.
  yield ctx.entities.lockEntities(new EntityInstanceId("account", key));
  yield ctx.waitForExternalEvent("go");
  return "held";
};

// ---------------------------------------------------------------------------------------------
// Scenarios

let client;
const tests = [];
const test = (name, fn) => tests.push({ name, fn });
const done = (id) => client.waitForOrchestrationCompletion(id, true, TIMEOUT_S);
const json = (s) => (s === undefined ? undefined : JSON.parse(s));
let counter = 0;
const unique = (name) => `js-${name}-${process.pid}-${(counter += 1)}`;

async function until(what, predicate) {
  const deadline = Date.now() + TIMEOUT_S * 1000;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50)); // polling interval for a condition, not a wait
  }
}

async function start(name, input, options = {}) {
  return client.scheduleNewOrchestration(name, input, { instanceId: unique(name), ...options });
}

test("activity sequence", async () => {
  const state = await done(await start("Sequence"));
  assert.equal(state.runtimeStatus, S.COMPLETED);
  assert.deepEqual(json(state.serializedOutput), ["Hello, Tokyo!", "Hello, Seattle!", "Hello, London!"]);
});

test("fan-out/fan-in of 50 activities", async () => {
  const state = await done(await start("FanOut", 50));
  assert.equal(json(state.serializedOutput), 2 * ((49 * 50) / 2));
});

test("sub-orchestrations", async () => {
  const id = await start("Parent", 3);
  const state = await done(id);
  assert.deepEqual(json(state.serializedOutput), [0, 2, 4]);
  const child = await client.getOrchestrationState(`${id}-child-1`);
  assert.equal(child.runtimeStatus, S.COMPLETED);
});

test("durable timer", async () => {
  const state = await done(await start("Timer", 300));
  assert.ok(json(state.serializedOutput) >= 300, state.serializedOutput);
});

test("external event before the timeout", async () => {
  const id = await start("Approval", 20000);
  await client.waitForOrchestrationStart(id, false, TIMEOUT_S);
  await client.raiseOrchestrationEvent(id, "Approval", "ana");
  assert.equal(json((await done(id)).serializedOutput), "approved by ana");
});

test("external event timeout", async () => {
  assert.equal(json((await done(await start("Approval", 200))).serializedOutput), "timed out");
});

test("continue-as-new", async () => {
  const id = await start("Counter", 0);
  const state = await done(id);
  assert.equal(json(state.serializedOutput), 5);
  const history = await client.getOrchestrationHistory(id);
  const started = history.filter((e) => e.type === "ExecutionStarted");
  assert.equal(started.length, 1, "history keeps the last execution only");
  assert.equal(json(started[0].input), 5);
});

test("terminate", async () => {
  const id = await start("Forever");
  await client.waitForOrchestrationStart(id, false, TIMEOUT_S);
  await client.terminateOrchestration(id, "enough");
  const state = await done(id);
  assert.equal(state.runtimeStatus, S.TERMINATED);
  assert.equal(json(state.serializedOutput), "enough");
});

test("recursive terminate", async () => {
  const id = await start("ForeverParent");
  await until("the child to run", async () => (await client.getOrchestrationState(`${id}-child`))?.runtimeStatus === S.RUNNING);
  await client.terminateOrchestration(id, terminateOptions({ recursive: true, output: "all of them" }));
  assert.equal((await done(id)).runtimeStatus, S.TERMINATED);
  assert.equal((await done(`${id}-child`)).runtimeStatus, S.TERMINATED);
});

test("suspend and resume", async () => {
  const id = await start("Suspendable");
  await client.waitForOrchestrationStart(id, false, TIMEOUT_S);
  await client.suspendOrchestration(id);
  await until("SUSPENDED", async () => (await client.getOrchestrationState(id)).runtimeStatus === S.SUSPENDED);
  await client.raiseOrchestrationEvent(id, "Go", "later");
  assert.equal((await client.getOrchestrationState(id)).runtimeStatus, S.SUSPENDED, "held while suspended");
  await client.resumeOrchestration(id);
  assert.equal(json((await done(id)).serializedOutput), "went later");
});

test("activity failure caught", async () => {
  const state = await done(await start("CatchFailure"));
  assert.equal(state.runtimeStatus, S.COMPLETED);
  assert.match(json(state.serializedOutput), /caught: .*failing on purpose: caught/);
});

test("activity failure uncaught fails the orchestration", async () => {
  const state = await done(await start("Uncaught"));
  assert.equal(state.runtimeStatus, S.FAILED);
  assert.match(state.failureDetails.message, /failing on purpose: uncaught/);
});

test("retry policy", async () => {
  flakyCalls = 0;
  const state = await done(await start("Retry", 3));
  assert.equal(state.runtimeStatus, S.COMPLETED);
  assert.equal(json(state.serializedOutput), 3);
});

test("custom status", async () => {
  const id = await start("CustomStatus");
  await until("the first custom status", async () => (await client.getOrchestrationState(id))?.serializedCustomStatus);
  assert.deepEqual(json((await client.getOrchestrationState(id)).serializedCustomStatus), { step: "waiting" });
  await client.raiseOrchestrationEvent(id, "Continue");
  const state = await done(id);
  assert.deepEqual(json(state.serializedCustomStatus), { step: "done" });
});

test("purge", async () => {
  const id = await start("Quick", 1);
  await done(id);
  const result = await client.purgeOrchestration(id);
  assert.equal(result.deletedInstanceCount, 1);
  assert.equal(await client.getOrchestrationState(id), undefined);
  const running = await start("Forever");
  await client.waitForOrchestrationStart(running, false, TIMEOUT_S);
  await assert.rejects(client.purgeOrchestration(running), "a running instance is not purged");
  await client.terminateOrchestration(running, "cleanup");
});

test("query by prefix and status, list instance ids", async () => {
  const prefix = unique("query");
  for (let i = 0; i < 5; i++) await client.scheduleNewOrchestration("Quick", i, { instanceId: `${prefix}-${i}` });
  for (let i = 0; i < 5; i++) await done(`${prefix}-${i}`);
  const seen = [];
  for await (const page of client.getAllInstances({ instanceIdPrefix: prefix, statuses: [S.COMPLETED], pageSize: 2 }).asPages()) {
    assert.ok(page.values.length <= 2);
    seen.push(...page.values.map((s) => s.instanceId));
  }
  assert.deepEqual(seen.sort(), [0, 1, 2, 3, 4].map((i) => `${prefix}-${i}`));
  const ids = await client.listInstanceIds({ runtimeStatus: [S.COMPLETED], pageSize: 1000 });
  assert.ok(ids.values.includes(`${prefix}-3`));
});

test("scheduled start", async () => {
  const at = new Date(Date.now() + 1500);
  const id = await start("Quick", "late", { startAt: at });
  assert.equal((await client.getOrchestrationState(id)).runtimeStatus, S.PENDING);
  const state = await done(id);
  assert.equal(state.runtimeStatus, S.COMPLETED);
  const history = await client.getOrchestrationHistory(id);
  const first = history.find((e) => e.type === "OrchestratorStarted");
  assert.ok(first.timestamp.getTime() >= at.getTime() - 1, `${first.timestamp.toISOString()} before ${at.toISOString()}`);
});

test("1 MiB payload", async () => {
  const payload = "x".repeat(1 << 20);
  const state = await done(await start("Payload", payload));
  assert.equal(json(state.serializedOutput).length, payload.length);
});

test("100 orchestrations at once", async () => {
  const ids = await Promise.all(Array.from({ length: 100 }, (_, i) => start("Quick", i)));
  const states = await Promise.all(ids.map(done));
  assert.deepEqual(states.map((s) => json(s.serializedOutput)), Array.from({ length: 100 }, (_, i) => i));
});

test("history", async () => {
  const id = await start("Sequence");
  await done(id);
  const types = (await client.getOrchestrationHistory(id)).map((e) => e.type);
  assert.equal(types[0], "OrchestratorStarted");
  assert.equal(types[1], "ExecutionStarted");
  assert.equal(types.filter((t) => t === "TaskScheduled").length, 3);
  assert.equal(types.filter((t) => t === "TaskCompleted").length, 3);
  assert.equal(types.at(-2), "ExecutionCompleted");
});

test("restart with the same and a new id", async () => {
  const id = await start("Quick", "again");
  await done(id);
  assert.equal(await client.restartOrchestration(id, false), id);
  assert.equal(json((await done(id)).serializedOutput), "again");
  const fresh = await client.restartOrchestration(id, true);
  assert.notEqual(fresh, id);
  assert.equal(json((await done(fresh)).serializedOutput), "again");
});

test("rewind a failed instance", async () => {
  flakyCalls = 0;
  const id = await start("FailOnce");
  assert.equal((await done(id)).runtimeStatus, S.FAILED);
  await client.rewindInstance(id, "try again");
  const state = await done(id);
  assert.equal(state.runtimeStatus, S.COMPLETED);
  assert.equal(json(state.serializedOutput), 2);
});

test("versions reach the orchestration", async () => {
  const state = await done(await start("Versioned", null, { version: "2.1" }));
  assert.equal(json(state.serializedOutput), "2.1");
});

test("tags are kept", async () => {
  const id = await start("Quick", 1, { tags: { team: "blue", tier: "gold" } });
  const state = await done(id);
  assert.deepEqual(state.tags, { team: "blue", tier: "gold" });
});

test("wait without a deadline answers on completion", async () => {
  // The SDK sends no gRPC deadline; the sidecar must wait until the instance completes.
  const id = await start("Timer", 200);
  const state = await client.waitForOrchestrationCompletion(id, true, TIMEOUT_S);
  assert.equal(state.runtimeStatus, S.COMPLETED);
});

test("duplicate id of a running instance is refused", async () => {
  const id = await start("Forever");
  await client.waitForOrchestrationStart(id, false, TIMEOUT_S);
  await assert.rejects(client.scheduleNewOrchestration("Quick", 1, { instanceId: id }), /ALREADY_EXISTS|already exists/i);
  await client.terminateOrchestration(id, "cleanup");
});

// Entity scenarios. The SDK has no wait for an entity's state, so state is polled with `until`;
// calls from orchestrations are awaited through the orchestration.

const stateOf = async (id) => (await client.getEntity(id))?.state;
const untilState = (id, expected) =>
  until(`${id} to hold ${JSON.stringify(expected)}`, async () => isDeepStrictEqual(await stateOf(id), expected));

test("entity: signals from the client, state read back", async () => {
  const id = new EntityInstanceId("Counter", unique("signal"));
  assert.equal(id.toString().startsWith("@counter@js-signal-"), true, "names are lower-cased, keys kept");
  assert.equal(await client.getEntity(id), undefined, "an entity nobody signalled does not exist");
  for (const n of [5, 3, 2]) await client.signalEntity(id, "add", n);
  await untilState(id, 10);
  const meta = await client.getEntity(id);
  assert.equal(meta.id.toString(), id.toString());
  assert.equal(meta.includesState, true);
  assert.equal(meta.lockedBy, undefined);
  assert.equal(meta.backlogQueueSize, 0);
  assert.ok(meta.lastModifiedTime.getTime() > Date.now() - 60_000, meta.lastModifiedTime.toISOString());
  const bare = await client.getEntity(id, false);
  assert.equal(bare.id.toString(), id.toString(), "an entity read without its state still exists");
  assert.equal(bare.lastModifiedTime.getTime(), meta.lastModifiedTime.getTime());
});

test("entity: a delayed signal from the client waits for its time", async () => {
  const id = new EntityInstanceId("counter", unique("later"));
  const at = new Date(Date.now() + 1500);
  await client.signalEntity(id, "add", 1, { signalTime: at });
  assert.equal(await client.getEntity(id), undefined, "a delayed signal must not run at once");
  await untilState(id, 1);
  assert.ok(Date.now() >= at.getTime(), "applied before its signal time");
});

test("entity: query by prefix with paging, last-modified range", async () => {
  const prefix = unique("query");
  const ids = [0, 1, 2, 3, 4].map((i) => new EntityInstanceId("counter", `${prefix}-${i}`));
  const before = new Date(Date.now() - 1000);
  for (const [i, id] of ids.entries()) await client.signalEntity(id, "add", i + 1);
  for (const [i, id] of ids.entries()) await untilState(id, i + 1);
  const pages = [];
  for await (const page of client.getEntities({ instanceIdStartsWith: `Counter@${prefix}`, pageSize: 2 }).asPages()) {
    pages.push(page.values.map((m) => [m.id.key, m.state]));
  }
  assert.ok(pages.every((p) => p.length <= 2), JSON.stringify(pages));
  assert.ok(pages.length >= 3, `five entities in pages of two: ${JSON.stringify(pages)}`);
  assert.deepEqual(pages.flat(), ids.map((id, i) => [id.key, i + 1]), "ordered by id, each once, with state");
  const names = [];
  for await (const m of client.getEntities({ instanceIdStartsWith: `counter@${prefix}`, includeState: false })) names.push(m.id.key);
  assert.equal(names.length, 5);
  const inRange = [];
  for await (const m of client.getEntities({ instanceIdStartsWith: `counter@${prefix}`, lastModifiedFrom: before, lastModifiedTo: new Date(Date.now() + 60_000) })) {
    inRange.push(m.id.key);
  }
  assert.equal(inRange.length, 5);
  for await (const m of client.getEntities({ instanceIdStartsWith: `counter@${prefix}`, lastModifiedFrom: new Date(Date.now() + 60_000) })) {
    assert.fail(`modified in the future: ${m.id}`);
  }
  for await (const m of client.getEntities({ instanceIdStartsWith: `counter@${prefix}`, lastModifiedTo: before })) {
    assert.fail(`modified before it existed: ${m.id}`);
  }
});

test("entity: clean storage keeps entities with state or pending work", async () => {
  const kept = new EntityInstanceId("counter", unique("clean-kept"));
  await client.signalEntity(kept, "add", 3);
  await untilState(kept, 3);
  // A delayed signal leaves an entity with no state yet but a queued operation (transient).
  const pending = new EntityInstanceId("counter", unique("clean-pending"));
  const at = new Date(Date.now() + 2000);
  await client.signalEntity(pending, "add", 4, { signalTime: at });
  const transient = async (includeTransient) => {
    const keys = [];
    for await (const m of client.getEntities({ instanceIdStartsWith: pending.toString(), includeTransient })) keys.push(m.id.key);
    return keys;
  };
  assert.deepEqual(await transient(false), []);
  assert.deepEqual(await transient(true), [pending.key], "a queued operation makes a transient entity");
  const result = await client.cleanEntityStorage(undefined, false); // one call, no SDK-side loop
  assert.equal(typeof result.emptyEntitiesRemoved, "number");
  assert.equal(typeof result.orphanedLocksReleased, "number");
  assert.equal(result.continuationToken, undefined, "one call does it all");
  assert.equal(await stateOf(kept), 3);
  assert.deepEqual(await transient(true), [pending.key], "clean must not drop queued work");
  await untilState(pending, 4);
  assert.ok(Date.now() >= at.getTime());
});

test("entity: calls from an orchestration, with a result and with a failure", async () => {
  const key = unique("calls");
  const state = await done(await start("EntityCalls", key));
  assert.equal(state.runtimeStatus, S.COMPLETED, JSON.stringify(state.failureDetails));
  const out = json(state.serializedOutput);
  assert.equal(out.added, 5, "the signal sent before the call ran first");
  assert.deepEqual(out.failure, {
    kind: "EntityOperationFailedException",
    operation: "failAfterAdd",
    entity: `@counter@${key}`,
    message: "refusing to add 100",
  });
  assert.equal(out.after, 5, "the failed operation's change was rolled back");
  assert.equal(await stateOf(new EntityInstanceId("counter", key)), 5);

  const uncaught = await done(await start("UncaughtEntityFailure", unique("uncaught")));
  assert.equal(uncaught.runtimeStatus, S.FAILED);
  assert.match(uncaught.failureDetails.message, /refusing to add 1/);
});

test("entity: signals from an orchestration, also delayed", async () => {
  const key = unique("orch-signal");
  const state = await done(await start("EntitySignals", key));
  assert.equal(state.runtimeStatus, S.COMPLETED);
  await untilState(new EntityInstanceId("counter", key), 6);
  const later = new EntityInstanceId("counter", `${key}-later`);
  await untilState(later, 10);
  const at = new Date(json(state.serializedOutput));
  const meta = await client.getEntity(later);
  assert.ok(meta.lastModifiedTime.getTime() >= at.getTime(), `${meta.lastModifiedTime.toISOString()} before ${at.toISOString()}`);
});

test("entity: an entity signals another and starts an orchestration", async () => {
  const to = unique("to");
  const flowId = unique("flow");
  await client.signalEntity(new EntityInstanceId("counter", unique("from")), "forward", { to, amount: 21, flowId });
  await untilState(new EntityInstanceId("counter", to), 21);
  await until("the entity's orchestration to exist", () => client.getOrchestrationState(flowId));
  assert.equal(json((await done(flowId)).serializedOutput), 42);
});

test("entity: critical sections, concurrent transfers conserve the total", async () => {
  const a = unique("acct-a");
  const b = unique("acct-b");
  const ea = new EntityInstanceId("account", a);
  const eb = new EntityInstanceId("account", b);
  await client.signalEntity(ea, "deposit", 100);
  await client.signalEntity(eb, "deposit", 100);
  await untilState(ea, 100);
  await untilState(eb, 100);
  const transfers = Array.from({ length: 12 }, (_, i) => (i % 2 === 0 ? { from: a, to: b, amount: i + 1 } : { from: b, to: a, amount: i + 1 }));
  const ids = await Promise.all(transfers.map((t) => start("Transfer", t)));
  const states = await Promise.all(ids.map(done));
  let expectA = 100;
  for (const [i, st] of states.entries()) {
    assert.equal(st.runtimeStatus, S.COMPLETED, JSON.stringify(st.failureDetails));
    const { before, after } = json(st.serializedOutput);
    const t = transfers[i];
    // Nothing else ran on either account between the reads inside one lock.
    const sign = t.from === a ? -1 : 1;
    assert.deepEqual(after, [before[0] - t.amount, before[1] + t.amount], `transfer ${i} interleaved`);
    assert.equal(before[0] + before[1], 200, `transfer ${i} saw a total of ${before[0] + before[1]}`);
    expectA += sign * t.amount;
  }
  // The last unlock travels to the entities as a message after the orchestration completes.
  for (const id of [ea, eb]) await until(`${id} to be unlocked`, async () => (await client.getEntity(id)).lockedBy === undefined);
  const [fa, fb] = [await stateOf(ea), await stateOf(eb)];
  assert.equal(fa + fb, 200, "the total is conserved");
  assert.equal(fa, expectA, "every transfer went through once");
});

test("entity: a lock held at completion is released, others wait meanwhile", async () => {
  const key = unique("acct-held");
  const id = new EntityInstanceId("account", key);
  await client.signalEntity(id, "deposit", 7);
  await untilState(id, 7);
  const holder = await start("LockAndWait", key);
  await until("the lock to be taken", async () => (await client.getEntity(id)).lockedBy === holder);
  // While locked, a signal from anyone but the holder waits in the entity's queue.
  await client.signalEntity(id, "deposit", 1);
  await until("the signal to be queued", async () => (await client.getEntity(id)).backlogQueueSize === 1);
  assert.equal(await stateOf(id), 7, "a signal ran inside someone else's critical section");
  await client.raiseOrchestrationEvent(holder, "go");
  assert.equal(json((await done(holder)).serializedOutput), "held");
  await untilState(id, 8);
  const after = await client.getEntity(id);
  assert.equal(after.lockedBy, undefined);
  assert.equal(after.backlogQueueSize, 0);
});

test("entity: a terminated holder's lock is released", async () => {
  const key = unique("acct-terminated");
  const id = new EntityInstanceId("account", key);
  await client.signalEntity(id, "deposit", 3);
  await untilState(id, 3);
  const holder = await start("LockAndWait", key);
  await until("the lock to be taken", async () => (await client.getEntity(id)).lockedBy === holder);
  await client.signalEntity(id, "deposit", 1);
  await client.terminateOrchestration(holder, "stop");
  assert.equal((await done(holder)).runtimeStatus, S.TERMINATED);
  await untilState(id, 4); // the queued signal runs once the lock is gone
  assert.equal((await client.getEntity(id)).lockedBy, undefined);
});

test("entity: purge by entity id deletes the entity", async () => {
  const id = new EntityInstanceId("counter", unique("purge"));
  await client.signalEntity(id, "add", 9);
  await untilState(id, 9);
  const result = await client.purgeOrchestration(id.toString());
  assert.equal(result.deletedInstanceCount, 1);
  assert.equal(await client.getEntity(id), undefined);
});

test("entity: delete, function and class entities", async () => {
  const counter = new EntityInstanceId("counter", unique("delete"));
  await client.signalEntity(counter, "add", 7);
  await untilState(counter, 7);
  await client.signalEntity(counter, "delete");
  await until("the counter to be gone", async () => (await client.getEntity(counter)) === undefined);
  const account = new EntityInstanceId("account", unique("delete"));
  await client.signalEntity(account, "deposit", 5);
  await untilState(account, 5);
  await client.signalEntity(account, "delete"); // TaskEntity's implicit delete
  await until("the account to be gone", async () => (await client.getEntity(account)) === undefined);
  await client.signalEntity(account, "deposit", 2);
  await untilState(account, 2); // starts over from the initial state
});

test("entity: 500 signals to one entity applied exactly once, in order", async () => {
  const id = new EntityInstanceId("ledger", unique("many"));
  for (let i = 0; i < 500; i++) await client.signalEntity(id, "append", i);
  const items = await until("500 signals to be applied", async () => {
    const s = await stateOf(id);
    return s && s.length >= 500 ? s : null;
  });
  assert.deepEqual(items, Array.from({ length: 500 }, (_, i) => i));
});

// ---------------------------------------------------------------------------------------------
// Versioned workers (their own sidecar, so their work never mixes with the main worker's)

async function versionedWorkerScenarios(run) {
  await run("strict version matching rejects other versions", async () => {
    const sidecar = await startSidecar(path.join(LOG_DIR, "outrigger-versioning.log"));
    const worker = new dt.TaskHubGrpcWorker({
      hostAddress: sidecar.address,
      logger: new dt.NoOpLogger(),
      versioning: { version: "2", matchStrategy: dt.VersionMatchStrategy.Strict, failureStrategy: dt.VersionFailureStrategy.Fail },
    });
    worker.addNamedOrchestrator("Versioned", orchestrators.Versioned);
    const c = new dt.TaskHubGrpcClient({ hostAddress: sidecar.address, logger: new dt.NoOpLogger() });
    try {
      await worker.start();
      const ok = await c.scheduleNewOrchestration("Versioned", null, { instanceId: unique("v2"), version: "2" });
      assert.equal(json((await c.waitForOrchestrationCompletion(ok, true, TIMEOUT_S)).serializedOutput), "2");
      const other = await c.scheduleNewOrchestration("Versioned", null, { instanceId: unique("v1"), version: "1" });
      const state = await c.waitForOrchestrationCompletion(other, true, TIMEOUT_S);
      assert.equal(state.runtimeStatus, S.FAILED);
      assert.match(state.failureDetails.errorType + state.failureDetails.message, /version/i);
    } finally {
      await worker.stop();
      await c.stop();
      await sidecar.stop();
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Runner

async function main() {
  const only = process.env.OUTRIGGER_JS_ONLY ? new RegExp(process.env.OUTRIGGER_JS_ONLY) : null;
  let passed = 0;
  let failed = 0;
  const run = async (name, fn) => {
    if (only && !only.test(name)) return;
    const began = Date.now();
    try {
      await Promise.race([
        fn(),
        new Promise((_, reject) => setTimeout(() => reject(new Error(`no result within ${TIMEOUT_S * 2} s`)), TIMEOUT_S * 2000).unref()),
      ]);
      passed += 1;
      console.log(`ok   ${name} (${Date.now() - began} ms)`);
    } catch (e) {
      failed += 1;
      console.log(`FAIL ${name}: ${e && e.stack ? e.stack : e}`);
    }
  };

  let sidecar;
  let worker;
  try {
    sidecar = await startSidecar(path.join(LOG_DIR, "outrigger.log"));
    worker = new dt.TaskHubGrpcWorker({ hostAddress: sidecar.address, logger: new dt.NoOpLogger() });
    for (const [name, fn] of Object.entries(orchestrators)) worker.addNamedOrchestrator(name, fn);
    for (const [name, fn] of Object.entries(activities)) worker.addNamedActivity(name, fn);
    for (const [name, factory] of Object.entries(entities)) worker.addNamedEntity(name, factory);
    await worker.start();
    client = new dt.TaskHubGrpcClient({ hostAddress: sidecar.address, logger: new dt.NoOpLogger() });
    for (const t of tests) await run(t.name, t.fn);
    await versionedWorkerScenarios(run);
  } catch (e) {
    failed += 1;
    console.log(`FAIL suite setup: ${e && e.stack ? e.stack : e}`);
  } finally {
    if (worker) await worker.stop().catch(() => {});
    if (client) await client.stop().catch(() => {});
    if (sidecar) await sidecar.stop();
  }
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed === 0 && passed > 0 ? 0 : 1);
}

main();
