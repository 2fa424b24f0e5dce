// hello5 (five sequential no-op steps) written with three TypeScript/JavaScript SDKs, as an
// application would run it: the workflow code, its steps and the client driving it live in
// this one process. Started by bench/vs.py; prints one JSON object on stdout:
// {"completed", "failed", "elapsed_s", "activities", "latencies_ms": [...], "errors": [...],
//  "app_cpu_s"}
//
//   node hello5.mjs durabletask --address HOST:PORT        Outrigger, five activities
//   node hello5.mjs restate --ingress URL --admin URL --port N   Restate, five ctx.run steps
//   node hello5.mjs dbos --database-url URL                DBOS, five steps on Postgres
//   common: --count N --concurrency N
//
// Each run is timed from just before the start call to the workflow's result.

import { parseArgs } from "node:util";
import { randomUUID } from "node:crypto";

const CITIES = ["Tokyo", "Seattle", "London", "Lagos", "Lima"];
const greet = (city) => `Hello ${city}`;

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: {
    count: { type: "string", default: "500" },
    concurrency: { type: "string", default: "50" },
    address: { type: "string" },
    ingress: { type: "string" },
    admin: { type: "string" },
    port: { type: "string", default: "0" },
    "database-url": { type: "string" },
  },
});
const system = positionals[0];
const count = Number(values.count);
const concurrency = Number(values.concurrency);
const prefix = `hello5-${randomUUID().slice(0, 8)}-`;

// Each system gives a setup returning { runOne(id) -> Promise<result>, close() }.
const systems = {
  async durabletask() {
    const dt = await import("@microsoft/durabletask-js");
    const logger = new dt.NoOpLogger();
    const worker = new dt.TaskHubGrpcWorker({ hostAddress: values.address, logger });
    worker.addNamedOrchestrator("hello5", async function* (ctx) {
      const out = [];
      for (const city of CITIES) out.push(yield ctx.callActivity("noop", city));
      return out;
    });
    worker.addNamedActivity("noop", (_ctx, city) => greet(city));
    await worker.start();
    const client = new dt.TaskHubGrpcClient({ hostAddress: values.address, logger });
    return {
      async runOne(id) {
        await client.scheduleNewOrchestration("hello5", null, { instanceId: id });
        const state = await client.waitForOrchestrationCompletion(id, true, 120);
        if (state?.runtimeStatus !== dt.OrchestrationStatus.COMPLETED) {
          throw new Error(`${id} ended ${state ? dt.OrchestrationStatus[state.runtimeStatus] : "missing"}`);
        }
        return state.serializedOutput;
      },
      async close() {
        await worker.stop();
        await client.stop();
      },
    };
  },

  async restate() {
    const restate = await import("@restatedev/restate-sdk");
    const hello5 = restate.service({
      name: "hello5",
      handlers: {
        run: async (ctx) => {
          const out = [];
          for (const city of CITIES) out.push(await ctx.run("noop", () => greet(city)));
          return out;
        },
      },
    });
    const port = await restate.endpoint().bind(hello5).listen(Number(values.port));
    const registered = await fetch(`${values.admin}/deployments`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ uri: `http://127.0.0.1:${port}`, force: true }),
    });
    if (!registered.ok) throw new Error(`registering the deployment: ${registered.status} ${await registered.text()}`);
    return {
      async runOne(id) {
        const response = await fetch(`${values.ingress}/hello5/run`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: "null",
        });
        const body = await response.text();
        if (!response.ok) throw new Error(`${id}: ${response.status} ${body}`);
        return body;
      },
      async close() {},
    };
  },

  async dbos() {
    const { DBOS } = await import("@dbos-inc/dbos-sdk");
    DBOS.setConfig({
      name: "outrigger-bench-hello5",
      systemDatabaseUrl: values["database-url"],
      logLevel: "warn",
      enableOTLP: false,
    });
    const noop = DBOS.registerStep(async (city) => greet(city), { name: "noop" });
    const hello5 = DBOS.registerWorkflow(
      async () => {
        const out = [];
        for (const city of CITIES) out.push(await noop(city));
        return out;
      },
      { name: "hello5" },
    );
    await DBOS.launch();
    return {
      async runOne(id) {
        const handle = await DBOS.startWorkflow(hello5, { workflowID: id })();
        return handle.getResult();
      },
      async close() {
        await DBOS.shutdown();
      },
    };
  },
};

async function main() {
  const setup = systems[system];
  if (!setup) throw new Error(`unknown system '${system}': durabletask, restate or dbos`);
  const engine = await setup();
  const latencies = [];
  const errors = [];
  let failed = 0;
  let next = 0;
  const cpuBefore = process.cpuUsage();
  const began = performance.now();
  async function lane() {
    while (next < count) {
      const id = `${prefix}${String(next++).padStart(7, "0")}`;
      const started = performance.now();
      try {
        await engine.runOne(id);
        latencies.push(performance.now() - started);
      } catch (e) {
        failed += 1;
        if (errors.length < 5) errors.push(String(e?.message ?? e));
      }
    }
  }
  await Promise.all(Array.from({ length: Math.max(1, concurrency) }, lane));
  const elapsed = (performance.now() - began) / 1000;
  const cpu = process.cpuUsage(cpuBefore);
  await engine.close();
  process.stdout.write(
    JSON.stringify({
      completed: latencies.length,
      failed,
      elapsed_s: elapsed,
      activities: 5 * latencies.length,
      latencies_ms: latencies,
      errors,
      app_cpu_s: (cpu.user + cpu.system) / 1e6,
    }) + "\n",
  );
  process.exit(0);
}

main().catch((e) => {
  console.error(e?.stack ?? String(e));
  process.exit(1);
});
