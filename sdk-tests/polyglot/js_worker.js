// The JavaScript half of the polyglot test: hosts the orchestrations only, with work-item
// filters built from its registry, so it never receives the Python worker's activities.
// Usage: node js_worker.js <address>; prints "ready" once connected, stops on SIGTERM.
"use strict";

const dt = require("../js/node_modules/@microsoft/durabletask-js");

const address = process.argv[2];
const worker = new dt.TaskHubGrpcWorker({ hostAddress: address, logger: new dt.NoOpLogger(), workItemFilters: "auto" });

worker.addNamedOrchestrator("PolyglotOrder", async function* (ctx, order) {
  const charged = yield ctx.callActivity("poly_charge", order);
  const shipped = yield ctx.callActivity("poly_ship", order);
  return `js orchestration: ${charged}; ${shipped}`;
});

worker.addNamedOrchestrator("PolyglotNeedsLateActivity", async function* (ctx, order) {
  return `js orchestration: ${yield ctx.callActivity("poly_late", order)}`;
});

worker.start().then(() => console.log("ready"));
process.on("SIGTERM", () => worker.stop().finally(() => process.exit(0)));
