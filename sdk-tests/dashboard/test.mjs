// End-to-end tests of the dashboard in headless Chromium, against a real outrigger with
// orchestrations run by the Python SDK (app.py), whose client also checks what actions did to
// the store. Screenshots go to results/. Ends with "N passed, N failed".
//
//   node test.mjs            (OUTRIGGER_BIN: the binary; PYTHON: a python with durabletask)
import { chromium } from "playwright-core";
import { spawn, execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, "../..");
const BIN = process.env.OUTRIGGER_BIN || path.join(ROOT, "target/release/outrigger");
const PYTHON = process.env.PYTHON || path.join(ROOT, "sdk-tests/python/.venv/bin/python");
const RESULTS = path.join(HERE, "results");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const TRACE_TEMPLATE = "http://tracing.example/trace/{traceId}";
const WAIT = 15000;

fs.mkdirSync(RESULTS, { recursive: true });
const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "outrigger-dashboard-"));
const children = [];

// ------------------------------------------------------------------ processes

// Starts outrigger on free ports; resolves once it logged both listeners.
function startSidecar(name, args = [], env = {}) {
  const log = fs.createWriteStream(path.join(RESULTS, `${name}.log`));
  const db = `sqlite://${path.join(scratch, `${name}.db`)}`;
  const proc = spawn(BIN, ["--port", "0", "--http-port", "0", "--database-url", db, ...args], {
    env: Object.assign({}, process.env, { RUST_LOG: "info" }, env),
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.push(proc);
  return new Promise((resolve, reject) => {
    let grpc = null, http = null, seen = "";
    const timer = setTimeout(() => reject(new Error(`${name}: no listening lines in 30 s:\n${seen}`)), 30000);
    const onLine = (line) => {
      log.write(line + "\n");
      if (seen.length < 20000) seen += line + "\n";
      const g = line.match(/listening addr=(\S+)/);
      const h = line.match(/listening http=(\S+)/);
      if (g && !grpc) grpc = g[1];
      if (h && !http) http = h[1];
      if (grpc && http) {
        clearTimeout(timer);
        resolve({ proc, grpc, url: `http://${http}` });
      }
    };
    for (const s of [proc.stdout, proc.stderr]) readline.createInterface({ input: s }).on("line", onLine);
    proc.on("exit", (code) => { clearTimeout(timer); if (!(grpc && http)) reject(new Error(`${name} exited ${code}:\n${seen}`)); });
  });
}

// The Python SDK app: one JSON command per line, one JSON answer per line.
function startApp(grpcAddress) {
  const proc = spawn(PYTHON, [path.join(HERE, "app.py"), grpcAddress], { stdio: ["pipe", "pipe", "pipe"] });
  children.push(proc);
  proc.stderr.pipe(fs.createWriteStream(path.join(RESULTS, "app.log")));
  const lines = readline.createInterface({ input: proc.stdout });
  const waiting = [];
  lines.on("line", (l) => { const w = waiting.shift(); if (w) w(JSON.parse(l)); });
  const next = () => new Promise((r) => waiting.push(r));
  const ready = next();
  const call = async (cmd) => {
    const answer = next();
    proc.stdin.write(JSON.stringify(cmd) + "\n");
    const a = await answer;
    if (a.error) throw new Error(`app ${cmd.op}: ${a.error}`);
    return a;
  };
  return ready.then(() => ({ call, proc }));
}

// ------------------------------------------------------------------ tiny test runner

const outcomes = [];
let consoleErrors = [];
let expectedFailures = [];
async function test(name, fn) {
  const started = Date.now();
  consoleErrors = [];
  expectedFailures = [];
  try {
    await fn();
    // A failed load the test provoked on purpose (a 404 page, a refused key) is not an error.
    const unexpected = consoleErrors.filter((e) => !expectedFailures.some((u) => e.includes(u)));
    if (unexpected.length) throw new Error(`console errors: ${unexpected.join(" | ")}`);
    outcomes.push(true);
    console.log(`ok    ${name} (${Date.now() - started} ms)`);
  } catch (e) {
    outcomes.push(false);
    console.log(`FAIL  ${name}\n      ${String(e.stack || e).split("\n").join("\n      ")}`);
  }
}

function assert(cond, message) { if (!cond) throw new Error(message); }
function eq(actual, expected, message) {
  const a = JSON.stringify(actual), b = JSON.stringify(expected);
  if (a !== b) throw new Error(`${message}: expected ${b}, got ${a}`);
}

// Polls `probe` until `accept` holds (a store change seen through gRPC, say).
async function until(probe, accept, what, timeout = WAIT) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    last = await probe();
    if (accept(last)) return last;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; last: ${JSON.stringify(last)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

// ------------------------------------------------------------------ browser

async function browser() {
  const profile = fs.mkdtempSync(path.join(scratch, "chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    viewport: { width: 1280, height: 900 },
  });
  context.on("page", watch);
  for (const p of context.pages()) watch(p);
  return context;
}

function watch(page) {
  page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(`${m.text()} @ ${m.location().url || ""}`); });
  page.on("pageerror", (e) => consoleErrors.push(`page error: ${e.message}`));
  page.on("requestfailed", (r) => {
    // A live stream cut by navigation is expected.
    if (!r.url().endsWith("/api/events")) consoleErrors.push(`request failed: ${r.url()} ${r.failure() && r.failure().errorText}`);
  });
}

async function openList(page, base, query = "") {
  await page.goto(`${base}/${query}`);
  await page.waitForSelector("main[data-ready=list][data-counts=ready]");
}

async function openInstance(page, base, id) {
  await page.goto(`${base}/instances/${encodeURIComponent(id)}`);
  await page.waitForSelector("main[data-ready=instance]");
}

async function rowIds(page) {
  return page.$$eval("#instances tbody tr", (rows) => rows.map((r) => r.dataset.id));
}

async function chipCounts(page) {
  return page.$$eval("#counts .chip", (chips) => Object.fromEntries(chips.map((c) => [c.dataset.status || "All", Number(c.querySelector(".n").textContent.replace(/,/g, ""))])));
}

// Waits for the toast that reports a bulk action and returns its text.
async function toastText(page, pattern) {
  const t = await page.waitForSelector(`#toast div >> text=${pattern}`, { timeout: WAIT });
  return t.textContent();
}

// Confirms the open dialog, filling its fields.
async function confirm(page, fields = {}) {
  await page.waitForSelector("dialog#confirm[open]");
  for (const [name, value] of Object.entries(fields)) await page.fill(`dialog#confirm [name=${name}]`, value);
  await page.click("#confirm-ok");
}

// ------------------------------------------------------------------ the run

async function main() {
  console.log(`dashboard tests: ${BIN}`);
  const side = await startSidecar("sidecar", ["--dashboard-trace-url", TRACE_TEMPLATE], {
    // A collector that is not there: spans are dropped, but trace contexts are recorded.
    OTEL_EXPORTER_OTLP_ENDPOINT: "http://127.0.0.1:9",
  });
  const base = side.url;
  const app = await startApp(side.grpc);
  const state = (id) => app.call({ op: "state", id });

  // The instances the tests look at.
  for (const id of ["ok-1", "ok-2", "ok-3"]) await app.call({ op: "start", name: "hello", id, input: id });
  for (const id of ["fail-1", "fail-2"]) await app.call({ op: "start", name: "failing", id, input: `declined ${id}` });
  await app.call({ op: "start", name: "sleepy", id: "nap-1" });
  await app.call({ op: "start", name: "parent", id: "fam-1" });
  for (const id of ["wait-1", "term-1"]) await app.call({ op: "start", name: "approval", id });
  for (const id of ["ok-1", "ok-2", "ok-3", "fail-1", "fail-2", "nap-1", "fam-1"]) await app.call({ op: "wait", id });
  for (const id of ["wait-1", "term-1"]) {
    await until(() => state(id), (s) => s.customStatus === '"waiting for approval"', `${id} waiting`);
  }

  const context = await browser();
  const page = context.pages()[0] || (await context.newPage());

  await test("the list shows every instance with its status, and the counts per status", async () => {
    await openList(page, base);
    eq(await chipCounts(page), { All: 9, Running: 2, Completed: 5, Failed: 2 }, "counts");
    const ids = await rowIds(page);
    eq([...ids].sort(), ["fail-1", "fail-2", "fam-1", "nap-1", "ok-1", "ok-2", "ok-3", "term-1", "wait-1"], "rows (sub-orchestrations hidden)");
    const shown = await page.$$eval("#instances tbody tr", (rows) => rows.map((r) => [r.dataset.id, r.dataset.status]));
    for (const [id, status] of shown) eq(status.toUpperCase(), (await state(id)).status, `status of ${id}`);
    const [rows, counted] = await page.$eval("main", (m) => [m.dataset.loadedMs, m.dataset.countsMs]);
    console.log(`      first page drawn ${rows} ms, counts ${counted} ms after the view started (9 instances)`);
    await page.screenshot({ path: path.join(RESULTS, "list.png"), fullPage: true });
    // The toggle brings the sub-orchestration in.
    await page.check("input[name=sub]");
    await page.click("#filters button[type=submit]");
    await page.waitForFunction(() => location.search.includes("sub=1"));
    await page.waitForSelector("#instances tr[data-id='fam-1-child']");
    eq((await chipCounts(page)).All, 10, "count with sub-orchestrations");
  });

  await test("filtering by status and by id prefix changes the URL and the rows", async () => {
    await openList(page, base);
    await page.click("#counts .chip[data-status=Failed]");
    await page.waitForFunction(() => new URLSearchParams(location.search).get("status") === "Failed");
    await page.waitForFunction(() => document.querySelectorAll("#instances tbody tr").length === 2);
    eq((await rowIds(page)).sort(), ["fail-1", "fail-2"], "failed rows");
    await page.fill("input[name=prefix]", "ok-");
    await page.click("#filters button[type=submit]");
    await page.waitForFunction(() => new URLSearchParams(location.search).get("prefix") === "ok-");
    await page.waitForSelector("#empty");
    assert(new URL(page.url()).searchParams.get("status") === "Failed", "the status filter stays");
    // The same URL, bookmarked, shows the same view; without the status, the prefix alone.
    await openList(page, base, "?prefix=ok-");
    eq((await rowIds(page)).sort(), ["ok-1", "ok-2", "ok-3"], "rows with the prefix");
    eq(await page.inputValue("input[name=prefix]"), "ok-", "the form shows the URL's filter");
    await page.goBack();
    await page.waitForSelector("#empty");
  });

  await test("columns sort by name both ways", async () => {
    await openList(page, base);
    await page.click("th button[data-sort=name]");
    await page.waitForFunction(() => new URLSearchParams(location.search).get("sort") === "name");
    await page.waitForSelector("th[aria-sort=descending] button[data-sort=name]");
    const names = await page.$$eval("#instances tbody tr td:nth-child(3)", (c) => c.map((x) => x.textContent));
    eq(names, [...names].sort().reverse(), "descending names");
    await page.click("th button[data-sort=name]");
    await page.waitForSelector("th[aria-sort=ascending] button[data-sort=name]");
    const up = await page.$$eval("#instances tbody tr td:nth-child(3)", (c) => c.map((x) => x.textContent));
    eq(up, [...up].sort(), "ascending names");
  });

  await test("an instance page shows its history, and timeline bars as long as the activities ran", async () => {
    await openInstance(page, base, "nap-1");
    const types = await page.$$eval("#history tbody tr", (rows) => rows.map((r) => r.dataset.type));
    for (const t of ["ExecutionStarted", "TaskScheduled", "TaskCompleted", "TimerCreated", "TimerFired", "ExecutionCompleted"]) {
      assert(types.includes(t), `history has ${t}: ${types}`);
    }
    eq(types.filter((t) => t === "TaskCompleted").length, 2, "two activity results");
    const output = JSON.parse((await state("nap-1")).output);
    // Bar lengths on screen, turned back into milliseconds with the timeline's scale.
    const bars = await page.$$eval("#timeline .tl-bar", (els) => {
      const tl = document.getElementById("timeline");
      const span = Number(tl.dataset.t1) - Number(tl.dataset.t0);
      return els.map((b) => {
        const track = b.parentElement.getBoundingClientRect().width;
        return { kind: b.dataset.kind, failed: b.dataset.failed, ms: (b.getBoundingClientRect().width / track) * span };
      });
    });
    const activities = bars.filter((b) => b.kind === "activity");
    eq(activities.length, 2, "two activity bars");
    const real = [output.short.ran_ms, output.long.ran_ms];
    activities.forEach((b, i) => {
      // From scheduled to result recorded: the real run time plus dispatch, a few ms here.
      assert(b.ms >= real[i] - 15 && b.ms <= real[i] + 250, `activity ${i} bar is ${b.ms.toFixed(0)} ms; it ran ${real[i].toFixed(0)} ms`);
    });
    const timer = bars.find((b) => b.kind === "timer");
    // TimerCreated is stamped when the step commits, a little after the orchestrator's clock
    // the SDK added the 0.5 s to; TimerFired when it is delivered.
    assert(timer && timer.ms >= 400 && timer.ms <= 800, `the 0.5 s timer's bar is ${timer && timer.ms.toFixed(0)} ms`);
    console.log(`      bars ${activities.map((b) => b.ms.toFixed(0)).join(", ")} ms for activities that ran ${real.map((r) => r.toFixed(0)).join(", ")} ms; timer ${timer.ms.toFixed(0)} ms`);
    const href = await page.getAttribute("#trace-link", "href");
    assert(/^http:\/\/tracing\.example\/trace\/[0-9a-f]{32}$/.test(href) && !/\/0{32}$/.test(href), `trace link ${href}`);
    await page.screenshot({ path: path.join(RESULTS, "instance.png"), fullPage: true });
  });

  await test("the failed-only filter keeps the failures, and the timeline marks them", async () => {
    await openInstance(page, base, "fail-1");
    const all = await page.$$eval("#history tbody tr", (r) => r.length);
    await page.check("#failed-only");
    await page.waitForFunction(() => new URLSearchParams(location.search).get("failed") === "1");
    const rows = await page.$$eval("#history tbody tr", (r) => r.map((x) => [x.dataset.type, x.className]));
    assert(rows.length > 0 && rows.length < all, `failed rows ${rows.length} of ${all}`);
    for (const [t, c] of rows) assert(c.includes("failed"), `${t} is a failure`);
    assert(rows.some(([t]) => t === "TaskFailed"), "the activity's failure is listed");
    assert(await page.$("#timeline .tl-bar.activity.failed"), "the failed activity's bar is marked");
    assert(await page.$("#failure"), "failure details are shown");
    eq(await page.$eval("#failure pre", (p) => p.textContent.includes("declined fail-1")), true, "the failure message");
  });

  await test("terminating from the instance page terminates it in the store", async () => {
    await openInstance(page, base, "term-1");
    await page.click("button[data-action=terminate]");
    await confirm(page, { reason: "not needed" });
    assert((await toastText(page, "Terminated")).includes("Terminated 1 of 1"), "the toast reports one success");
    const s = await until(() => state("term-1"), (s) => s.status === "TERMINATED", "term-1 terminated");
    eq(s.output, '"not needed"', "the reason is the output");
    // The page follows by itself.
    await page.waitForSelector("h1 .status.Terminated");
  });

  await test("a bulk purge of a selection deletes those instances from the store", async () => {
    await openList(page, base, "?status=Failed");
    await page.waitForFunction(() => document.querySelectorAll("#instances tbody tr").length === 2);
    await page.check("#instances thead input[type=checkbox]");
    eq(await page.textContent("#selected-count"), "2 selected", "selection");
    await page.click("button[data-bulk=purge]");
    await confirm(page);
    assert((await toastText(page, "Purged")).includes("Purged 2 of 2"), "two purged");
    for (const id of ["fail-1", "fail-2"]) eq((await state(id)).status, null, `${id} is gone from the store`);
    await page.waitForSelector("#empty");
  });

  await test("a bulk restart of the whole filter runs every match again", async () => {
    const before = await page.evaluate(async () => (await (await fetch("/api/instances?prefix=ok-")).json()).items.map((i) => i.createdAt));
    await openList(page, base, "?prefix=ok-");
    await page.click("button[data-bulk-all=restart]");
    await confirm(page);
    assert((await toastText(page, "Restarted")).includes("Restarted 3 of 3"), "three restarted");
    for (const id of ["ok-1", "ok-2", "ok-3"]) eq((await app.call({ op: "wait", id })).status, "COMPLETED", `${id} ran again`);
    const after = await page.evaluate(async () => (await (await fetch("/api/instances?prefix=ok-")).json()).items.map((i) => i.createdAt));
    assert(Math.min(...after) > Math.max(...before), "each was created anew");
  });

  await test("an open instance page shows a new event without a reload", async () => {
    await openInstance(page, base, "wait-1");
    await page.evaluate(() => { window.__notReloaded = true; });
    await page.waitForSelector("#live-state.on");
    await app.call({ op: "raise", id: "wait-1", event: "go", data: { ok: true } });
    await page.waitForSelector("#history tr[data-type=EventRaised]", { timeout: WAIT });
    await page.waitForSelector("h1 .status.Completed", { timeout: WAIT });
    assert(await page.evaluate(() => window.__notReloaded === true), "the page was not reloaded");
    assert(await page.$("#timeline .tl-bar.event"), "the event is on the timeline");
  });

  await test("the list follows new instances live, and the pause button holds updates back", async () => {
    await openList(page, base);
    await page.evaluate(() => { window.__notReloaded = true; });
    await page.waitForSelector("#live-state.on");
    await app.call({ op: "start", name: "hello", id: "live-1", input: "x" });
    await page.waitForSelector("#instances tr[data-id='live-1']", { timeout: WAIT });
    await page.click("#live");
    await page.waitForSelector("#live[aria-pressed=false]");
    await app.call({ op: "start", name: "hello", id: "live-2", input: "x" });
    // The change arrives, but is held while paused.
    await page.waitForSelector("#live-state >> text=updates waiting", { timeout: WAIT });
    assert(!(await page.$("#instances tr[data-id='live-2']")), "no update while paused");
    await page.click("#live");
    await page.waitForSelector("#instances tr[data-id='live-2']", { timeout: WAIT });
    assert(await page.evaluate(() => window.__notReloaded === true), "the page was not reloaded");
  });

  await test("the entities view lists entities with their state and backlog", async () => {
    await app.call({ op: "signal", key: "c1", value: 5 });
    await app.call({ op: "signal", key: "c1", value: 2 });
    await until(() => app.call({ op: "entity", key: "c1" }), (e) => e.state === 7, "counter c1 at 7");
    await page.goto(`${base}/entities?prefix=${encodeURIComponent("@counter@")}`);
    await page.waitForSelector("main[data-ready=entities] #entities tr[data-id='@counter@c1']");
    const cells = await page.$$eval("#entities tr[data-id='@counter@c1'] td", (t) => t.map((c) => c.textContent));
    eq([cells[0], cells[1], cells[3], cells[4]], ["counter", "c1", "unlocked", "0"], "name, key, lock, backlog");
    await page.click("#entities tr[data-id='@counter@c1'] details summary");
    eq(await page.textContent("#entities tr[data-id='@counter@c1'] pre"), "7", "state");
    await page.goto(`${base}/entities?prefix=${encodeURIComponent("@nothing@")}`);
    await page.waitForSelector("main[data-ready=entities] #empty");
  });

  await test("keyboard: / jumps to the instance box, Enter opens the instance", async () => {
    await openList(page, base);
    await page.keyboard.press("/");
    eq(await page.evaluate(() => document.activeElement.id), "goto-id", "focus");
    await page.keyboard.type("nap-1");
    await page.keyboard.press("Enter");
    await page.waitForSelector("main[data-ready=instance] #summary");
    // Focus moved to the new view; Tab reaches its first link, Enter follows it.
    await page.keyboard.press("Tab");
    eq(await page.evaluate(() => document.activeElement.textContent), "← Instances", "the first link of the page");
    await page.keyboard.press("Enter");
    await page.waitForSelector("main[data-ready=list]");
    await openList(page, base);
    await page.keyboard.press("Tab");
    assert(await page.evaluate(() => document.activeElement.classList.contains("skip")), "the first Tab from the top reaches the skip link");
  });

  await test("empty and error states are explained", async () => {
    await openList(page, base, "?prefix=no-such-");
    assert(await page.isVisible("#empty"), "an empty filter says so");
    expectedFailures.push("404");
    await openInstance(page, base, "no-such-instance");
    assert((await page.textContent("#not-found")).includes("no-such-instance"), "an unknown instance says so");
  });

  await test("narrow and dark: no sideways scrolling, dark colours", async () => {
    const narrow = await context.newPage();
    await narrow.setViewportSize({ width: 390, height: 844 });
    await narrow.emulateMedia({ colorScheme: "dark" });
    await openInstance(narrow, base, "nap-1");
    const fits = await narrow.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth + 1);
    assert(fits, "the page fits 390 px");
    const bg = await narrow.evaluate(() => getComputedStyle(document.body).backgroundColor);
    const [r, g, b] = bg.match(/\d+/g).map(Number);
    assert(r + g + b < 120, `dark background, got ${bg}`);
    await narrow.screenshot({ path: path.join(RESULTS, "instance-narrow-dark.png"), fullPage: true });
    await openList(narrow, base);
    assert(await narrow.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth + 1), "the list fits 390 px");
    await narrow.screenshot({ path: path.join(RESULTS, "list-narrow-dark.png"), fullPage: true });
    await narrow.close();
  });

  // A read-only sidecar: state visible, actions gone and refused.
  const ro = await startSidecar("read-only", ["--dashboard-read-only"]);
  await test("read-only mode hides the actions and refuses them", async () => {
    await openList(page, ro.url);
    assert(await page.isVisible("#banner"), "a read-only banner");
    assert(!(await page.isVisible("#bulk")), "no bulk actions");
    expectedFailures.push("403");
    const status = await page.evaluate(async () => (await fetch("/api/bulk?action=purge&all=1", { method: "POST" })).status);
    eq(status, 403, "bulk refused");
  });

  // A sidecar with API keys: nothing but the page itself without a key, everything with one.
  const READ_KEY = "dashboard-read-key-0123456789";
  const WRITE_KEY = "dashboard-write-key-0123456789";
  const keyed = await startSidecar("keyed", ["--api-keys", `read:${READ_KEY},write:${WRITE_KEY}`]);
  const startKeyed = async (id) => {
    const r = await fetch(`${keyed.url}/runtime/webhooks/durabletask/orchestrators/hello/${id}`, {
      method: "POST", headers: { Authorization: `Bearer ${WRITE_KEY}`, "Content-Type": "application/json" }, body: '"x"',
    });
    eq(r.status, 202, `start ${id} over HTTP with the key`);
  };
  await startKeyed("keyed-1");
  const keyedPage = await context.newPage();
  await test("with an API key set, a request without it is refused", async () => {
    expectedFailures.push("401", "403");
    await keyedPage.goto(`${keyed.url}/`);
    // The page loads (it carries no data) and asks for a key instead of showing instances.
    await keyedPage.waitForSelector("#api-key", { timeout: WAIT });
    eq(await rowIds(keyedPage), [], "no rows without a key");
    const refused = await keyedPage.evaluate(async () => {
      const out = {};
      for (const p of ["/api/config", "/api/instances", "/api/events", "/runtime/webhooks/durabletask/instances"]) {
        const r = await fetch(p);
        out[p] = [r.status, (await r.json()).Message ? "message" : "no message"];
      }
      return out;
    });
    for (const [p, answer] of Object.entries(refused)) eq(answer, [401, "message"], `${p} without a key`);
    // A read key may look but not act.
    const status = await keyedPage.evaluate(async (key) => (await fetch("/api/bulk?action=terminate", {
      method: "POST", headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json" }, body: '{"ids":["keyed-1"]}',
    })).status, READ_KEY);
    eq(status, 403, "an action with a read key");
    const after = await fetch(`${keyed.url}/runtime/webhooks/durabletask/instances/keyed-1`, { headers: { Authorization: `Bearer ${READ_KEY}` } });
    eq((await after.json()).runtimeStatus, "Pending", "the refused terminate changed nothing");
  });

  await test("with the key the page lists instances, follows them live and keeps the key for the tab", async () => {
    await keyedPage.fill("#api-key", WRITE_KEY);
    await keyedPage.click("form.error-box button[type=submit]");
    await keyedPage.waitForSelector("main[data-ready=list][data-counts=ready]", { timeout: WAIT });
    eq(await rowIds(keyedPage), ["keyed-1"], "the keyed sidecar's instance");
    await keyedPage.waitForSelector("#live-state.on", { timeout: WAIT });
    await startKeyed("keyed-2");
    await keyedPage.waitForSelector("#instances tr[data-id='keyed-2']", { timeout: WAIT });
    // The key stays with the tab: a reload needs no prompt.
    await keyedPage.reload();
    await keyedPage.waitForSelector("main[data-ready=list][data-counts=ready]", { timeout: WAIT });
    assert(!(await keyedPage.$("#api-key")), "no key prompt after a reload");
    await keyedPage.screenshot({ path: path.join(RESULTS, "list-with-key.png") });
  });
  await keyedPage.close();

  await test("SIGTERM stops the sidecar while a page keeps a live stream open", async () => {
    await openList(page, base);
    await page.waitForSelector("#live-state.on");
    const exited = new Promise((resolve) => side.proc.once("exit", (code, signal) => resolve({ code, signal })));
    const t = Date.now();
    side.proc.kill("SIGTERM");
    const result = await Promise.race([exited, new Promise((r) => setTimeout(() => r(null), 20000))]);
    assert(result, "the sidecar was still running 20 s after SIGTERM");
    eq(result.code, 0, "exit code");
    console.log(`      stopped ${Date.now() - t} ms after SIGTERM`);
    // The page says it lost the stream rather than pretending to be live.
    expectedFailures.push("ERR_CONNECTION_REFUSED", "Failed to fetch", "/api/");
    await page.waitForSelector("#live-state.off", { timeout: WAIT });
  });

  await context.close();
  app.proc.stdin.end(); // the app stops its worker and exits
}

let failedToRun = false;
try {
  await main();
} catch (e) {
  failedToRun = true;
  console.log(`FAIL  setup: ${e.stack || e}`);
} finally {
  for (const c of children) if (c.exitCode === null) c.kill("SIGTERM");
  fs.rmSync(scratch, { recursive: true, force: true });
}
const passed = outcomes.filter(Boolean).length;
const failed = outcomes.length - passed + (failedToRun ? 1 : 0);
console.log(`screenshots and logs: ${RESULTS}`);
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed || !passed ? 1 : 0);
