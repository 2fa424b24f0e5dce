// Outrigger's SDK scenarios through @microsoft/durabletask-js, against a freshly started
// release binary. Prints one line per scenario and ends with "N passed, N failed".
"use strict";

const assert = require("node:assert/strict");
const path = require("node:path");
const dt = require("@microsoft/durabletask-js");
const { startSidecar } = require("./sidecar");

const { OrchestrationStatus: S, whenAll, whenAny, RetryPolicy, terminateOptions } = dt;
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
