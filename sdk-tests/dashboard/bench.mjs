// Dashboard load times on a large store: the list's JSON routes timed from Node, and the page
// itself in headless Chromium (from navigation until the rows and counts are drawn).
//
//   node bench.mjs sqlite:///tmp/dash1m.db      (OUTRIGGER_BIN: the binary, release please)
//
// The store is made by fill.sh beside this file. Prints a markdown table.
import { chromium } from "playwright-core";
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const BIN = process.env.OUTRIGGER_BIN || path.resolve(HERE, "../../target/release/outrigger");
const url = process.argv[2];
const RUNS = Number(process.env.RUNS || 15);
if (!url) { console.error("usage: node bench.mjs DATABASE_URL"); process.exit(2); }

const proc = spawn(BIN, ["--port", "0", "--http-port", "0", "--database-url", url], { stdio: ["ignore", "pipe", "pipe"] });
const base = await new Promise((resolve, reject) => {
  const onLine = (l) => { const m = l.match(/listening http=(\S+)/); if (m) resolve(`http://${m[1]}`); };
  for (const s of [proc.stdout, proc.stderr]) readline.createInterface({ input: s }).on("line", onLine);
  proc.on("exit", (c) => reject(new Error(`outrigger exited ${c}`)));
});

// User + system CPU of the sidecar so far, in ms (/proc/PID/stat, clock ticks of 10 ms).
function cpuMs() {
  const f = fs.readFileSync(`/proc/${proc.pid}/stat`, "utf8").split(") ")[1].split(" ");
  return (Number(f[11]) + Number(f[12])) * 10;
}

function stats(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return { p50: s[Math.floor(s.length / 2)], max: s[s.length - 1] };
}

async function timeGet(route) {
  const times = [];
  let rows = null;
  let cpu0 = 0;
  for (let i = 0; i < RUNS + 1; i++) {
    if (i === 1) cpu0 = cpuMs();
    const t = performance.now();
    const r = await fetch(base + route);
    const body = await r.json();
    if (!r.ok) throw new Error(`${route}: ${r.status} ${JSON.stringify(body)}`);
    if (i > 0) times.push(performance.now() - t); // the first call warms the page cache
    rows = body.items ? body.items.length : body.total;
  }
  return Object.assign(stats(times), { rows, cpu: (cpuMs() - cpu0) / RUNS });
}

console.log(`load average at start: ${os.loadavg().map((l) => l.toFixed(1)).join(" ")} on ${os.cpus().length} cores`);
const total = (await (await fetch(`${base}/api/counts?sub=1`)).json()).total;
const routes = [
  ["first page (50 newest)", "/api/instances"],
  ["counts per status", "/api/counts"],
  ["status = Failed", "/api/instances?status=Failed"],
  ["status = Running", "/api/instances?status=Running"],
  ["name = Fill", "/api/instances?name=Fill"],
  ["id prefix fill-0999", "/api/instances?prefix=fill-0999"],
  ["custom status contains 'stage 7'", "/api/instances?customStatus=stage%207"],
  ["sorted by completion", "/api/instances?sort=completed"],
  ["sorted by name", "/api/instances?sort=name"],
  ["page 2 (after token)", null],
];
console.log(`| request (store of ${total.toLocaleString("en-US")} instances) | rows | p50 ms | max ms | sidecar CPU ms per request |`);
console.log("|---|---|---|---|---|");
for (const [label, route0] of routes) {
  let route = route0;
  if (!route) {
    const first = await (await fetch(`${base}/api/instances`)).json();
    route = `/api/instances?after=${encodeURIComponent(first.next)}`;
  }
  const r = await timeGet(route);
  console.log(`| ${label} | ${r.rows} | ${r.p50.toFixed(1)} | ${r.max.toFixed(1)} | ${r.cpu.toFixed(1)} |`);
}

// The page in the browser: navigation until rows and counts are drawn.
const profile = fs.mkdtempSync(path.join(os.tmpdir(), "outrigger-bench-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
const page = context.pages()[0] || (await context.newPage());
for (const [label, query] of [["page: first list page", ""], ["page: status = Failed", "?status=Failed"], ["page: id prefix", "?prefix=fill-0999"]]) {
  const times = [], countTimes = [];
  for (let i = 0; i < 6; i++) {
    const t = performance.now();
    await page.goto(`${base}/${query}`);
    await page.waitForSelector("main[data-ready=list]");
    const drawn = performance.now() - t;
    await page.waitForSelector("main[data-counts=ready]", { timeout: 120000 });
    if (i > 0) { times.push(drawn); countTimes.push(performance.now() - t); }
  }
  const rows = await page.$$eval("#instances tbody tr", (r) => r.length);
  const s = stats(times), c = stats(countTimes);
  console.log(`| ${label}: navigation to rows drawn | ${rows} | ${s.p50.toFixed(1)} | ${s.max.toFixed(1)} | |`);
  console.log(`| ${label}: navigation to counts drawn | | ${c.p50.toFixed(1)} | ${c.max.toFixed(1)} | |`);
}
await context.close();
fs.rmSync(profile, { recursive: true, force: true });
proc.kill("SIGTERM");
