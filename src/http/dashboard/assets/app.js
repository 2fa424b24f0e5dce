// Outrigger dashboard: plain script, no framework, no build step. Views are rebuilt from the
// JSON under /api/ with DOM calls (never innerHTML with data, so payloads cannot inject
// markup). The list's filters live in the URL; live updates come from /api/events.
"use strict";

const STATUSES = ["Running", "Pending", "Suspended", "Completed", "Failed", "Terminated", "Canceled", "ContinuedAsNew"];
const FILTER_KEYS = ["status", "name", "prefix", "customStatus", "createdFrom", "createdTo", "completedFrom", "completedTo", "sub", "sort", "order"];
const TIME_KEYS = ["createdFrom", "createdTo", "completedFrom", "completedTo"];

const state = {
  config: { readOnly: false, traceUrl: null },
  live: true,          // the user's choice (the Pause button)
  connected: false,
  pending: false,      // a change arrived while paused
  view: null,          // { kind, refresh(changes) }
  key: sessionStorage.getItem("outrigger.key") || "",
};

// ---------------------------------------------------------------- small helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const main = () => document.getElementById("main");
function show(...nodes) {
  main().replaceChildren(...nodes.filter((n) => n !== null && n !== undefined));
}

function pad(n, w = 2) { return String(n).padStart(w, "0"); }
function fmtTime(ms) {
  if (ms === null || ms === undefined) return "";
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}
function timeCell(ms) {
  return h("td", { class: "t", title: ms ? new Date(ms).toISOString() : null }, fmtTime(ms));
}
function fmtDuration(ms) {
  if (ms === null || ms === undefined || isNaN(ms)) return "";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
  if (ms < 3600000) return `${Math.floor(ms / 60000)} min ${Math.round((ms % 60000) / 1000)} s`;
  return `${Math.floor(ms / 3600000)} h ${Math.round((ms % 3600000) / 60000)} min`;
}
function statusBadge(s) { return h("span", { class: `status ${s}` }, s); }
function instanceLink(id) { return h("a", { href: `/instances/${encodeURIComponent(id)}` }, id); }

function toast(text, bad) {
  const box = document.getElementById("toast");
  const item = h("div", { class: bad ? "bad" : "" }, text);
  box.append(item);
  setTimeout(() => item.remove(), bad ? 9000 : 5000);
}

class HttpError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.key) headers["Authorization"] = `Bearer ${state.key}`;
  let response;
  try {
    response = await fetch(path, Object.assign({}, options, { headers }));
  } catch (e) {
    throw new HttpError(0, `the sidecar cannot be reached (${e.message})`);
  }
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = null; }
  if (!response.ok) {
    const message = (body && (body.Message || body.message)) || text || response.statusText;
    throw new HttpError(response.status, message);
  }
  return body;
}

// Asks for an API key when the sidecar refused us, then retries the view.
function keyPrompt(err) {
  const input = h("input", { type: "password", id: "api-key", autocomplete: "off", required: true });
  const form = h("form", {
    class: "error-box",
    onsubmit: (e) => {
      e.preventDefault();
      state.key = input.value.trim();
      sessionStorage.setItem("outrigger.key", state.key);
      // Refused at the first call: the page has not loaded its settings yet.
      if (!state.config) { boot(); return; }
      connectLive();
      route();
    },
  },
  h("h2", {}, err.status === 403 ? "This key may not do that" : "This sidecar needs an API key"),
  h("p", { class: "muted" }, err.message),
  h("label", { for: "api-key" }, "API key (kept for this browser tab only)"), " ",
  input, " ", h("button", { class: "btn primary", type: "submit" }, "Use key"));
  show(form);
  input.focus();
}

function errorBox(err, retry) {
  if (err.status === 401) { keyPrompt(err); return null; }
  return h("div", { class: "error-box", role: "alert" },
    h("strong", {}, err.status ? `Error ${err.status}: ` : "Error: "), err.message, " ",
    retry ? h("button", { class: "btn", onclick: retry }, "Retry") : null);
}

function showError(err, retry) {
  const box = errorBox(err, retry);
  if (box) show(box);
}

// A confirmation dialog; resolves to the extra fields' values, or null when cancelled.
function confirmDialog(title, text, okLabel, extra) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  const ok = document.getElementById("confirm-ok");
  ok.textContent = okLabel;
  const holder = document.getElementById("confirm-extra");
  holder.replaceChildren(...(extra || []));
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      if (dialog.returnValue !== "ok") return resolve(null);
      const values = {};
      for (const el of holder.querySelectorAll("input, textarea")) values[el.name] = el.value;
      resolve(values);
    }, { once: true });
    dialog.returnValue = "";
    dialog.showModal();
    (holder.querySelector("input, textarea") || document.getElementById("confirm-cancel")).focus();
  });
}

// Runs an action on instances through /api/bulk and reports how many succeeded.
async function bulk(action, params, body) {
  const q = new URLSearchParams(params);
  q.set("action", action);
  const r = await api(`/api/bulk?${q}`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body || {}) });
  const verb = { terminate: "Terminated", purge: "Purged", restart: "Restarted", resume: "Resumed", suspend: "Suspended", rewind: "Rewound", raise: "Raised the event on" }[action];
  let text = `${verb} ${r.succeeded} of ${r.matched} instance${r.matched === 1 ? "" : "s"}`;
  if (r.failed) text += `; ${r.failed} failed${r.errors.length ? ` (${r.errors[0].message})` : ""}`;
  if (r.more) text += "; more match the filter: run it again for the next batch";
  toast(text, r.failed > 0 && r.succeeded === 0);
  return r;
}

// ---------------------------------------------------------------- URL state of the list

function listParams() {
  const u = new URLSearchParams(location.search);
  const p = {};
  for (const k of FILTER_KEYS) if (u.get(k)) p[k] = u.get(k);
  return p;
}

// The list's URL filters as the API's query (times as epoch milliseconds).
function apiQuery(p) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(p)) {
    if (TIME_KEYS.includes(k)) {
      const ms = Date.parse(v);
      if (!isNaN(ms)) q.set(k, String(ms));
    } else q.set(k, v);
  }
  return q;
}

function setListUrl(p, replace) {
  const q = new URLSearchParams();
  for (const k of FILTER_KEYS) if (p[k]) q.set(k, p[k]);
  const url = `/${q.toString() ? "?" + q : ""}`;
  if (replace) history.replaceState(null, "", url); else history.pushState(null, "", url);
  route();
}

// datetime-local values are local times; the URL keeps ISO instants.
function toLocalInput(iso) {
  const ms = Date.parse(iso || "");
  if (isNaN(ms)) return "";
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}
function fromLocalInput(v) {
  if (!v) return "";
  const ms = Date.parse(v);
  return isNaN(ms) ? "" : new Date(ms).toISOString();
}

// ---------------------------------------------------------------- instance list

function listView() {
  const p = listParams();
  const selected = new Set();
  let pages = [null];        // tokens of the pages seen, for Previous
  let pageIndex = 0;
  let lastItems = [];
  let lastCounts = null;

  const statusSet = new Set((p.status || "").split(",").filter(Boolean));

  // Filters form
  const field = (label, name, attrs) => h("label", {}, label, h("input", Object.assign({ name, value: p[name] || "" }, attrs || {})));
  const timeField = (label, name) => h("label", {}, label, h("input", { type: "datetime-local", name, value: toLocalInput(p[name]) }));
  const subBox = h("input", { type: "checkbox", name: "sub", checked: p.sub === "1" });
  const form = h("form", {
    class: "filters", id: "filters", "aria-label": "Filters",
    onsubmit: (e) => {
      e.preventDefault();
      const data = new FormData(form);
      const next = { status: p.status, sort: p.sort, order: p.order };
      for (const k of ["name", "prefix", "customStatus"]) next[k] = (data.get(k) || "").trim();
      for (const k of TIME_KEYS) next[k] = fromLocalInput(data.get(k));
      next.sub = subBox.checked ? "1" : "";
      setListUrl(next);
    },
  },
  field("Orchestration name", "name", { placeholder: "exact name" }),
  field("Instance id prefix", "prefix", { placeholder: "e.g. order-" }),
  field("Custom status contains", "customStatus"),
  timeField("Created from", "createdFrom"),
  timeField("Created to", "createdTo"),
  timeField("Completed from", "completedFrom"),
  timeField("Completed to", "completedTo"),
  h("label", { class: "check" }, subBox, "Show sub-orchestrations"),
  h("div", { class: "row" },
    h("button", { class: "btn primary", type: "submit" }, "Apply filters"),
    h("button", { class: "btn", type: "button", onclick: () => setListUrl({}) }, "Clear all")));

  const counts = h("div", { class: "counts", id: "counts", role: "group", "aria-label": "Counts per status; press to filter" });
  const active = h("p", { class: "active-filters", id: "active-filters" });
  const bulkBar = h("div", { class: "bulk", id: "bulk", hidden: true });
  const tableHolder = h("div", { id: "rows" });
  const pager = h("div", { class: "pager" });

  // The filters in words, so nobody wonders why rows are missing.
  const described = [];
  if (statusSet.size) described.push(`status ${[...statusSet].join(" or ")}`);
  if (p.name) described.push(`name = ${p.name}`);
  if (p.prefix) described.push(`id starts with "${p.prefix}"`);
  if (p.customStatus) described.push(`custom status contains "${p.customStatus}"`);
  for (const k of TIME_KEYS) if (p[k]) described.push(`${k.replace(/([A-Z])/g, " $1").toLowerCase()} ${fmtTime(Date.parse(p[k]))}`);
  described.push(p.sub === "1" ? "sub-orchestrations shown" : "sub-orchestrations hidden");
  active.textContent = `Showing: ${described.join(", ")}.`;

  function drawCounts(c) {
    lastCounts = c;
    const chips = [h("button", {
      class: "chip", type: "button", "aria-pressed": statusSet.size === 0 ? "true" : "false", dataset: { status: "" },
      onclick: () => setListUrl(Object.assign({}, p, { status: "" })),
    }, "All ", h("span", { class: "n" }, c.total.toLocaleString("en-US")))];
    for (const s of STATUSES) {
      const n = c.counts[s] || 0;
      if (!n && !statusSet.has(s)) continue;
      chips.push(h("button", {
        class: "chip", type: "button", "aria-pressed": statusSet.has(s) ? "true" : "false", dataset: { status: s },
        onclick: (e) => {
          const next = new Set(e.shiftKey || e.ctrlKey || e.metaKey ? statusSet : []);
          if (statusSet.has(s) && next.size) next.delete(s); else next.add(s);
          if (statusSet.size === 1 && statusSet.has(s) && !(e.shiftKey || e.ctrlKey || e.metaKey)) next.clear();
          setListUrl(Object.assign({}, p, { status: [...next].join(",") }));
        },
        title: "Filter by this status (Shift-click to add to the selection)",
      }, statusBadge(s), h("span", { class: "n" }, n.toLocaleString("en-US"))));
    }
    counts.replaceChildren(...chips);
  }

  function drawBulk() {
    if (state.config.readOnly) { bulkBar.hidden = true; return; }
    bulkBar.hidden = false;
    const n = selected.size;
    const total = lastCounts ? (statusSet.size ? [...statusSet].reduce((a, s) => a + (lastCounts.counts[s] || 0), 0) : lastCounts.total) : null;
    const act = (action, label) => h("button", {
      class: "btn" + (action === "purge" || action === "terminate" ? " danger" : ""), type: "button", disabled: n === 0,
      dataset: { bulk: action },
      onclick: () => runBulk(action, label, { ids: [...selected] }, `${n} selected instance${n === 1 ? "" : "s"}`),
    }, label);
    const actAll = (action, label) => h("button", {
      class: "btn", type: "button", dataset: { bulkAll: action }, disabled: total === 0,
      onclick: () => runBulk(action, label, null, `every instance matching the filter (${total === null ? "?" : total.toLocaleString("en-US")})`),
    }, `${label} all matching`);
    bulkBar.replaceChildren(
      h("strong", { id: "selected-count" }, `${n} selected`),
      act("terminate", "Terminate"), act("purge", "Purge"), act("restart", "Restart"), act("resume", "Resume"),
      h("span", { class: "muted" }, "|"),
      actAll("terminate", "Terminate"), actAll("purge", "Purge"), actAll("restart", "Restart"), actAll("resume", "Resume"));
  }

  async function runBulk(action, label, body, what) {
    const reasonInput = action === "terminate" ? [h("label", {}, "Reason (optional)", h("input", { name: "reason" }))] : [];
    const ok = await confirmDialog(`${label}?`, `${label} ${what}. ${action === "purge" ? "Purged instances and their history are deleted for good; only finished instances can be purged." : ""}`, label, reasonInput);
    if (!ok) return;
    const params = body ? {} : Object.fromEntries(apiQuery(p));
    if (!body) params.all = "1";
    if (ok.reason) params.reason = ok.reason;
    try {
      await bulk(action, params, body);
      selected.clear();
      load();
    } catch (e) {
      toast(`${label} failed: ${e.message}`, true);
    }
  }

  function sortHeader(label, key) {
    const current = p.sort || "created";
    const order = p.order || "desc";
    const sorted = current === key;
    return h("th", { scope: "col", "aria-sort": sorted ? (order === "asc" ? "ascending" : "descending") : "none" },
      h("button", {
        class: "sort", type: "button", dataset: { sort: key },
        onclick: () => setListUrl(Object.assign({}, p, { sort: key === "created" ? "" : key, order: sorted && order === "desc" ? "asc" : "" })),
        title: key === "completed" ? "Sort by completion (finished instances only)" : `Sort by ${label.toLowerCase()}`,
      }, label));
  }

  function drawRows(items, next) {
    lastItems = items;
    for (const id of [...selected]) if (!items.some((i) => i.instanceId === id)) selected.delete(id);
    if (!items.length) {
      const filtered = Object.keys(p).some((k) => p[k] && k !== "sort" && k !== "order");
      tableHolder.replaceChildren(h("div", { class: "empty", id: "empty" },
        filtered ? "No instances match these filters. " : "No orchestration instances yet. Start one with any Durable Task SDK pointed at this sidecar, and it appears here.",
        filtered ? h("button", { class: "btn", type: "button", onclick: () => setListUrl({}) }, "Clear filters") : null));
      pager.replaceChildren();
      drawBulk();
      return;
    }
    const all = h("input", {
      type: "checkbox", "aria-label": "Select every instance on this page",
      checked: items.every((i) => selected.has(i.instanceId)),
      onchange: (e) => { for (const i of items) e.target.checked ? selected.add(i.instanceId) : selected.delete(i.instanceId); drawRows(items, next); },
    });
    const ro = state.config.readOnly;
    const head = h("tr", {},
      ro ? null : h("th", { scope: "col" }, all),
      h("th", { scope: "col" }, "Instance id"),
      sortHeader("Name", "name"),
      h("th", { scope: "col" }, "Status"),
      sortHeader("Created", "created"),
      sortHeader("Completed", "completed"),
      h("th", { scope: "col", class: "hide-narrow" }, "Duration"),
      h("th", { scope: "col", class: "hide-narrow" }, "Custom status"));
    const rows = items.map((i) => h("tr", { class: i.runtimeStatus === "Failed" ? "failed" : "", dataset: { id: i.instanceId, status: i.runtimeStatus } },
      ro ? null : h("td", {}, h("input", {
        type: "checkbox", "aria-label": `Select ${i.instanceId}`, checked: selected.has(i.instanceId),
        onchange: (e) => { e.target.checked ? selected.add(i.instanceId) : selected.delete(i.instanceId); drawBulk(); },
      })),
      h("td", { class: "id mono" }, instanceLink(i.instanceId), i.parentInstanceId ? h("div", { class: "muted" }, "sub-orchestration of ", instanceLink(i.parentInstanceId)) : null),
      h("td", {}, i.name, i.version ? h("span", { class: "muted" }, ` v${i.version}`) : null),
      h("td", { title: i.failure || null }, statusBadge(i.runtimeStatus)),
      timeCell(i.createdAt),
      timeCell(i.completedAt),
      h("td", { class: "t hide-narrow" }, fmtDuration((i.completedAt || i.lastUpdatedAt) - i.createdAt)),
      h("td", { class: "cs mono hide-narrow", title: i.customStatus || null }, i.customStatus || "")));
    tableHolder.replaceChildren(h("div", { class: "table-wrap" }, h("table", { id: "instances" },
      h("caption", { class: "sr" }, "Orchestration instances"), h("thead", {}, head), h("tbody", {}, rows))));
    pager.replaceChildren(
      h("span", { class: "muted" }, `Page ${pageIndex + 1}`),
      h("button", { class: "btn", type: "button", disabled: pageIndex === 0, onclick: () => { pageIndex--; load(); } }, "Previous"),
      h("button", { class: "btn", type: "button", id: "next-page", disabled: !next, onclick: () => { pages[pageIndex + 1] = next; pageIndex++; load(); } }, "Next"));
    drawBulk();
  }

  // Rows and counts are asked for at once; rows are drawn as soon as they come (counting a
  // big filter takes longer than reading one page of it).
  async function load() {
    const q = apiQuery(p);
    if (pages[pageIndex]) q.set("after", pages[pageIndex]);
    const started = performance.now();
    const rowsAsked = api(`/api/instances?${q}`);
    const countsAsked = api(`/api/counts?${apiQuery(p)}`);
    countsAsked.then((c) => {
      drawCounts(c);
      drawBulk();
      main().dataset.countsMs = String(Math.round(performance.now() - started));
      main().dataset.counts = "ready";
    }, (e) => {
      if (e.status !== 401) counts.replaceChildren(h("span", { class: "muted", role: "alert" }, `Counts unavailable: ${e.message}`));
    });
    try {
      const page = await rowsAsked;
      drawRows(page.items, page.next);
      main().dataset.loadedMs = String(Math.round(performance.now() - started));
      main().dataset.ready = "list";
    } catch (e) {
      const box = errorBox(e, load);
      if (box) tableHolder.replaceChildren(box);
    }
  }

  show(h("h1", {}, "Orchestration instances"), form, counts, active, bulkBar, tableHolder, pager);
  load();
  return {
    kind: "list",
    refresh: () => load(),
  };
}

// ---------------------------------------------------------------- JSON viewer

function jsonNode(text) {
  let value;
  try { value = JSON.parse(text); } catch (_) { return h("pre", {}, text); }
  const pre = h("pre", {});
  const walk = (v, indent) => {
    const sp = "  ".repeat(indent);
    if (Array.isArray(v)) {
      if (!v.length) { pre.append("[]"); return; }
      pre.append("[\n");
      v.forEach((x, i) => { pre.append(sp + "  "); walk(x, indent + 1); pre.append(i < v.length - 1 ? ",\n" : "\n"); });
      pre.append(sp + "]");
    } else if (v && typeof v === "object") {
      const keys = Object.keys(v);
      if (!keys.length) { pre.append("{}"); return; }
      pre.append("{\n");
      keys.forEach((k, i) => {
        pre.append(sp + "  ", h("span", { class: "j-key" }, JSON.stringify(k)), ": ");
        walk(v[k], indent + 1);
        pre.append(i < keys.length - 1 ? ",\n" : "\n");
      });
      pre.append(sp + "}");
    } else if (typeof v === "string") pre.append(h("span", { class: "j-str" }, JSON.stringify(v)));
    else if (typeof v === "number") pre.append(h("span", { class: "j-num" }, String(v)));
    else pre.append(h("span", { class: "j-lit" }, String(v)));
  };
  walk(value, 0);
  return pre;
}

function jsonSection(title, text, open, id) {
  if (text === null || text === undefined) return h("details", { class: "json", id }, h("summary", {}, title, h("span", { class: "muted" }, " (none)")), h("pre", { class: "muted" }, "—"));
  return h("details", { class: "json", open: open || null, id }, h("summary", {}, title), typeof text === "string" ? jsonNode(text) : jsonNode(JSON.stringify(text)));
}

// ---------------------------------------------------------------- timeline

function timelineNode(bars, now, status) {
  if (!bars.length) return h("p", { class: "empty" }, "Nothing has run yet.");
  const t0 = Math.min(...bars.map((b) => b.start));
  const live = !["Completed", "Failed", "Terminated", "Canceled"].includes(status);
  const ends = bars.map((b) => b.end !== null ? b.end : b.start);
  let t1 = Math.max(...ends, ...(live ? [now] : []));
  if (t1 - t0 < 1) t1 = t0 + 1;
  const span = t1 - t0;
  const pct = (t) => `${((t - t0) / span) * 100}%`;
  const ticks = [0, 0.25, 0.5, 0.75, 1].map((f) => h("span", { class: "tick" }, `+${fmtDuration(span * f)}`));
  const tickRow = h("div", { class: "ticks" }, ticks);
  ticks.forEach((t, i) => { t.style.left = `${i * 25}%`; });
  const kindName = { orchestration: "orchestration", activity: "activity", timer: "timer", suborchestration: "sub-orchestration", event: "event", suspended: "suspended", terminated: "terminated" };
  const rows = bars.map((b) => {
    const mark = b.kind === "event" || b.kind === "terminated";
    const end = b.end !== null ? b.end : (mark ? b.start : (live ? now : b.start));
    const bar = h("div", {
      class: `tl-bar ${b.kind}${b.failed ? " failed" : ""}${b.end === null && !mark ? " open" : ""}${mark ? " mark" : ""}`,
      role: "img",
      "aria-label": `${kindName[b.kind]} ${b.name}: ${mark ? "at +" + fmtDuration(b.start - t0) : (b.end === null ? "running for " : "took ") + fmtDuration(end - b.start)}${b.failed ? ", failed" : ""}`,
      title: `${b.name}\nstart ${fmtTime(b.start)}${mark ? "" : `\n${b.end === null ? "still running" : "end " + fmtTime(b.end)}\n${fmtDuration(end - b.start)}`}${b.failed ? "\nfailed" : ""}`,
      dataset: { kind: b.kind, name: b.name, start: String(b.start), end: b.end === null ? "" : String(b.end), failed: b.failed ? "1" : "0" },
    });
    bar.style.left = pct(b.start);
    if (!mark) bar.style.width = `${((end - b.start) / span) * 100}%`;
    const label = b.instanceId
      ? h("a", { href: `/instances/${encodeURIComponent(b.instanceId)}` }, b.name)
      : b.name;
    return h("div", { class: "tl-row" }, h("div", { class: "tl-label", title: b.name }, h("span", { class: "kind" }, kindName[b.kind] + " "), label), h("div", { class: "tl-track" }, bar));
  });
  return h("div", { class: "timeline", id: "timeline", dataset: { t0: String(t0), t1: String(t1) } },
    h("div", { class: "tl-axis" }, h("div", { class: "muted" }, fmtTime(t0)), tickRow),
    rows,
    h("div", { class: "legend" }, h("span", { class: "l-activity" }, "activity"), h("span", { class: "l-timer" }, "timer"),
      h("span", { class: "l-sub" }, "sub-orchestration"), h("span", { class: "l-event" }, "event arrived"), h("span", { class: "l-failed" }, "failed")));
}

// ---------------------------------------------------------------- one instance

function eventDetail(e) {
  const parts = [];
  if (e.name) parts.push(e.name);
  if (e.instanceId) parts.push(instanceLink(e.instanceId));
  if (e.taskScheduledId !== undefined) parts.push(`for #${e.taskScheduledId}`);
  if (e.timerId !== undefined) parts.push(`timer #${e.timerId}`);
  if (e.fireAt) parts.push(`fires ${fmtTime(e.fireAt)}`);
  if (e.status) parts.push(statusBadge(e.status));
  if (e.reason) parts.push(`reason: ${e.reason}`);
  if (e.failure) parts.push(h("span", { class: "err" }, `${e.failure.errorType}: ${e.failure.errorMessage}`));
  const payload = e.input !== undefined ? ["input", e.input] : e.result !== undefined ? ["result", e.result] : null;
  const out = [];
  parts.forEach((p, i) => { if (i) out.push(" · "); out.push(p); });
  if (payload) out.push(h("details", { class: "json" }, h("summary", {}, payload[0]), jsonNode(payload[1])));
  return out;
}

function instanceView(id) {
  let failedOnly = new URLSearchParams(location.search).get("failed") === "1";
  let data = null;

  async function act(action, label, extra, params, body) {
    const ok = await confirmDialog(`${label}?`, `${label} instance ${id}.`, label, extra);
    if (!ok) return;
    const q = Object.assign({}, params || {});
    if (ok.reason) q.reason = ok.reason;
    let b = body || {};
    if (action === "raise") {
      if (!ok.event) { toast("An event name is needed", true); return; }
      q.event = ok.event;
      if (ok.data && ok.data.trim()) {
        try { b.data = JSON.parse(ok.data); } catch (e) { toast(`The event data is not JSON: ${e.message}`, true); return; }
      }
    }
    try {
      const r = await bulk(action, q, Object.assign(b, { ids: [id] }));
      if (action === "purge" && r.succeeded) { history.pushState(null, "", "/"); route(); return; }
      load();
    } catch (e) {
      toast(`${label} failed: ${e.message}`, true);
    }
  }

  function actions(i) {
    if (state.config.readOnly) return h("p", { class: "muted" }, "Read-only dashboard: actions are turned off.");
    const s = i.runtimeStatus;
    const finished = ["Completed", "Failed", "Terminated", "Canceled"].includes(s);
    const reason = () => [h("label", {}, "Reason (optional)", h("input", { name: "reason" }))];
    const b = (action, label, enabled, extra, danger) => h("button", {
      class: "btn" + (danger ? " danger" : ""), type: "button", disabled: !enabled, dataset: { action },
      onclick: () => act(action, label, extra ? extra() : []),
    }, label);
    return h("div", { class: "row actions", role: "group", "aria-label": "Actions" },
      b("raise", "Raise event", !finished, () => [
        h("label", {}, "Event name", h("input", { name: "event", required: true })),
        h("label", {}, "Data (JSON, optional)", h("textarea", { name: "data", placeholder: "{\"approved\": true}" }))]),
      b("terminate", "Terminate", !finished, reason, true),
      b("suspend", "Suspend", s === "Running" || s === "Pending", reason),
      b("resume", "Resume", s === "Suspended", reason),
      b("rewind", "Rewind", s === "Failed", reason),
      b("restart", "Restart", finished),
      b("purge", "Purge", finished, null, true));
  }

  function draw() {
    const { instance: i, history: events, timeline, children, traceUrl, traceId, now } = data;
    const dl = h("dl", { class: "summary", id: "summary" });
    const add = (k, v) => { if (v !== null && v !== undefined && v !== "") dl.append(h("dt", {}, k), h("dd", {}, v)); };
    add("Name", i.name);
    add("Version", i.version);
    add("Instance id", h("span", { class: "mono" }, i.instanceId));
    add("Execution id", h("span", { class: "mono" }, i.executionId));
    add("Status", statusBadge(i.runtimeStatus));
    add("Created", fmtTime(i.createdAt));
    add("Scheduled start", i.scheduledStartAt ? fmtTime(i.scheduledStartAt) : null);
    add("Last updated", fmtTime(i.lastUpdatedAt));
    add("Completed", i.completedAt ? fmtTime(i.completedAt) : null);
    add("Duration", fmtDuration((i.completedAt || now) - i.createdAt));
    add("Parent", i.parentInstanceId ? instanceLink(i.parentInstanceId) : null);
    if (children.length) {
      add("Children", h("ul", { id: "children" }, children.map((c) => h("li", {}, instanceLink(c.instanceId), ` ${c.name} `, h("span", { class: "muted" }, c.state)))));
    }
    add("Tags", Object.keys(i.tags || {}).length ? Object.entries(i.tags).map(([k, v]) => `${k}=${v}`).join(", ") : null);
    add("Trace", traceUrl ? h("a", { href: traceUrl, target: "_blank", rel: "noopener noreferrer", id: "trace-link" }, `Open trace ${traceId}`) : (traceId ? h("span", { class: "mono", title: "Set --dashboard-trace-url to link to your tracing UI" }, traceId) : null));

    const failedBox = h("input", {
      type: "checkbox", id: "failed-only", checked: failedOnly,
      onchange: (e) => {
        failedOnly = e.target.checked;
        const u = new URL(location.href);
        if (failedOnly) u.searchParams.set("failed", "1"); else u.searchParams.delete("failed");
        history.replaceState(null, "", u);
        draw();
      },
    });
    const shown = events.map((e, n) => [e, n]).filter(([e]) => !failedOnly || e.failed);
    const t0 = events.length ? Math.min(...events.map((e) => e.timestamp)) : 0;
    const table = shown.length
      ? h("div", { class: "table-wrap" }, h("table", { id: "history" },
        h("caption", { class: "sr" }, "History events"),
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "#"), h("th", { scope: "col" }, "Time"), h("th", { scope: "col", class: "hide-narrow" }, "+"), h("th", { scope: "col" }, "Event"), h("th", { scope: "col", class: "hide-narrow" }, "Id"), h("th", { scope: "col" }, "Details"))),
        h("tbody", {}, shown.map(([e, n]) => h("tr", { class: e.failed ? "failed" : "", dataset: { type: e.type } },
          h("td", {}, String(n)), timeCell(e.timestamp), h("td", { class: "t hide-narrow" }, `+${fmtDuration(e.timestamp - t0)}`),
          h("td", {}, e.type), h("td", { class: "hide-narrow" }, e.eventId >= 0 ? String(e.eventId) : ""), h("td", {}, eventDetail(e)))))))
      : h("p", { class: "empty", id: "history-empty" }, failedOnly ? "No failed events in this history." : "No history yet.");

    const keepOpen = {};
    for (const d of main().querySelectorAll("details[id]")) keepOpen[d.id] = d.open;
    const section = (title, text, defOpen, sid) => {
      const s = jsonSection(title, text, sid in keepOpen ? keepOpen[sid] : defOpen, sid);
      return s;
    };
    show(
      h("p", {}, h("a", { href: "/" }, "← Instances")),
      h("h1", {}, i.name, " ", h("span", { class: "muted mono" }, i.instanceId), " ", statusBadge(i.runtimeStatus)),
      actions(i),
      dl,
      section("Input", i.input, false, "input"),
      section("Output", i.output, i.runtimeStatus === "Completed", "output"),
      section("Custom status", i.customStatus, !!i.customStatus, "custom-status"),
      i.failureDetails ? section("Failure details", i.failureDetails, true, "failure") : null,
      h("h2", {}, "Timeline"),
      timelineNode(timeline, now, i.runtimeStatus),
      h("h2", {}, "History ", h("span", { class: "muted" }, `(${events.length} events)`)),
      h("p", {}, h("label", {}, failedBox, " Failed events only")),
      table);
    main().dataset.ready = "instance";
    main().dataset.events = String(events.length);
  }

  async function load() {
    try {
      data = await api(`/api/instances/${encodeURIComponent(id)}`);
      draw();
    } catch (e) {
      if (e.status === 404) {
        show(h("p", {}, h("a", { href: "/" }, "← Instances")), h("div", { class: "empty", id: "not-found" }, `No instance with id "${id}". It may have been purged.`));
        main().dataset.ready = "instance";
      } else showError(e, load);
    }
  }
  show(h("p", { class: "muted" }, "Loading…"));
  load();
  return {
    kind: "instance",
    refresh: (changes) => { if (!changes || changes.all || changes.ids.includes(id)) load(); },
  };
}

// ---------------------------------------------------------------- entities

function entitiesView() {
  const prefix = new URLSearchParams(location.search).get("prefix") || "";
  const pages = [null];
  let pageIndex = 0;
  const input = h("input", { name: "prefix", value: prefix, placeholder: "@counter@ or @counter@key-" });
  const form = h("form", {
    class: "filters", id: "entity-filters", "aria-label": "Filters",
    onsubmit: (e) => {
      e.preventDefault();
      const v = input.value.trim();
      history.pushState(null, "", `/entities${v ? "?prefix=" + encodeURIComponent(v) : ""}`);
      route();
    },
  }, h("label", {}, "Entity id prefix", input), h("div", { class: "row" }, h("button", { class: "btn primary", type: "submit" }, "Apply filter")));
  const holder = h("div", { id: "rows" });
  const pager = h("div", { class: "pager" });

  async function load() {
    const q = new URLSearchParams();
    if (prefix) q.set("prefix", prefix);
    if (pages[pageIndex]) q.set("after", pages[pageIndex]);
    try {
      const page = await api(`/api/entities?${q}`);
      if (!page.items.length) {
        holder.replaceChildren(h("div", { class: "empty", id: "empty" }, prefix ? "No entities match this prefix." : "No entities yet. They appear here once an orchestration or a client signals one."));
      } else {
        holder.replaceChildren(h("div", { class: "table-wrap" }, h("table", { id: "entities" },
          h("caption", { class: "sr" }, "Entities"),
          h("thead", {}, h("tr", {}, ["Entity", "Key", "State", "Locked by", "Backlog", "Last modified"].map((c) => h("th", { scope: "col" }, c)))),
          h("tbody", {}, page.items.map((e) => h("tr", { dataset: { id: e.id } },
            h("td", { class: "mono" }, e.name), h("td", { class: "id mono" }, e.key),
            h("td", {}, e.state === null ? h("span", { class: "muted" }, "none") : h("details", { class: "json" }, h("summary", {}, "state"), jsonNode(e.state))),
            h("td", { class: "id mono" }, e.lockedBy ? instanceLink(e.lockedBy) : h("span", { class: "muted" }, "unlocked")),
            h("td", { class: "t" }, String(e.backlog)),
            timeCell(e.lastModifiedAt)))))));
      }
      pager.replaceChildren(
        h("button", { class: "btn", type: "button", disabled: pageIndex === 0, onclick: () => { pageIndex--; load(); } }, "Previous"),
        h("button", { class: "btn", type: "button", disabled: !page.next, onclick: () => { pages[pageIndex + 1] = page.next; pageIndex++; load(); } }, "Next"));
      main().dataset.ready = "entities";
    } catch (e) {
      const box = errorBox(e, load);
      if (box) holder.replaceChildren(box);
    }
  }
  show(h("h1", {}, "Entities"), form, holder, pager);
  if (!state.config.entities) {
    holder.replaceChildren(h("div", { class: "empty" }, "Durable entities are not available on this sidecar."));
    main().dataset.ready = "entities";
  } else load();
  return { kind: "entities", refresh: () => { if (state.config.entities) load(); } };
}

// ---------------------------------------------------------------- routing, live updates

function route() {
  const path = location.pathname;
  for (const k of ["ready", "counts", "loadedMs", "countsMs"]) delete main().dataset[k];
  for (const a of document.querySelectorAll("[data-nav]")) a.removeAttribute("aria-current");
  const m = path.match(/^\/instances\/(.+)$/);
  if (m) {
    state.view = instanceView(decodeURIComponent(m[1]));
    document.title = `${decodeURIComponent(m[1])} · Outrigger`;
  } else if (path === "/entities") {
    document.querySelector("[data-nav=entities]").setAttribute("aria-current", "page");
    state.view = entitiesView();
    document.title = "Entities · Outrigger";
  } else {
    document.querySelector("[data-nav=instances]").setAttribute("aria-current", "page");
    state.view = listView();
    document.title = "Instances · Outrigger";
  }
}

// Internal links navigate without a reload.
document.addEventListener("click", (e) => {
  const a = e.target.closest && e.target.closest("a[href^='/']");
  if (!a || a.target || e.ctrlKey || e.metaKey || e.shiftKey || e.button !== 0) return;
  e.preventDefault();
  history.pushState(null, "", a.getAttribute("href"));
  route();
  main().focus();
});
window.addEventListener("popstate", route);

// Changes arrive as server-sent events, read with fetch so an API key can go in a header.
// A change refreshes the view at most once a second; while paused, it is only remembered.
let liveAbort = null;
let refreshTimer = null;
let lastRefresh = 0;
let queued = null;
function setLiveState() {
  const el = document.getElementById("live-state");
  el.className = `live-state ${state.connected && state.live ? "on" : "off"}`;
  el.textContent = !state.live ? (state.pending ? "paused: updates waiting" : "paused") : (state.connected ? "live" : "connecting…");
  const btn = document.getElementById("live");
  btn.textContent = state.live ? "Pause live" : "Resume live";
  btn.setAttribute("aria-pressed", state.live ? "true" : "false");
}

function merge(a, b) {
  if (!a) return b;
  if (a.all || b.all) return { all: true };
  return { ids: [...a.ids, ...b.ids] };
}

function changed(change) {
  if (!state.live) { state.pending = true; setLiveState(); return; }
  queued = merge(queued, change);
  if (refreshTimer) return;
  refreshTimer = setTimeout(() => {
    refreshTimer = null;
    lastRefresh = Date.now();
    const c = queued; queued = null;
    if (state.view) state.view.refresh(c);
  }, Math.max(0, lastRefresh + 1000 - Date.now()));
}

async function connectLive() {
  if (liveAbort) liveAbort.abort();
  const abort = new AbortController();
  liveAbort = abort;
  let delay = 1000;
  while (!abort.signal.aborted) {
    try {
      const headers = state.key ? { Authorization: `Bearer ${state.key}` } : {};
      const response = await fetch("/api/events", { headers, signal: abort.signal });
      if (!response.ok || !response.body) throw new Error(`status ${response.status}`);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          let type = "message", payload = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) type = line.slice(6).trim();
            else if (line.startsWith("data:")) payload += line.slice(5).trim();
          }
          if (type === "ready") {
            const wasConnected = state.connected;
            state.connected = true; delay = 1000; setLiveState();
            // Anything may have changed while we were away.
            if (!wasConnected && state.view && state.everConnected) changed({ all: true });
            state.everConnected = true;
          } else if (type === "change") {
            try { changed(JSON.parse(payload)); } catch (_) { changed({ all: true }); }
          }
        }
      }
    } catch (e) {
      if (abort.signal.aborted) return;
    }
    state.connected = false; setLiveState();
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 15000);
  }
}

function setupChrome() {
  const live = document.getElementById("live");
  live.addEventListener("click", () => {
    state.live = !state.live;
    if (state.live && state.pending) { state.pending = false; if (state.view) state.view.refresh({ all: true }); }
    setLiveState();
  });
  const themeBtn = document.getElementById("theme");
  const themes = ["auto", "light", "dark"];
  const apply = (t) => {
    if (t === "auto") document.documentElement.removeAttribute("data-theme"); else document.documentElement.dataset.theme = t;
    themeBtn.textContent = `Theme: ${t}`;
  };
  let theme = localStorage.getItem("outrigger.theme") || "auto";
  apply(theme);
  themeBtn.addEventListener("click", () => {
    theme = themes[(themes.indexOf(theme) + 1) % themes.length];
    localStorage.setItem("outrigger.theme", theme);
    apply(theme);
  });
  document.getElementById("goto").addEventListener("submit", (e) => {
    e.preventDefault();
    const id = document.getElementById("goto-id").value.trim();
    if (!id) return;
    history.pushState(null, "", `/instances/${encodeURIComponent(id)}`);
    route();
    main().focus();
  });
  // "/" jumps to the go-to box, as in many consoles.
  document.addEventListener("keydown", (e) => {
    if (e.key === "/" && !/^(INPUT|TEXTAREA|SELECT)$/.test(document.activeElement.tagName) && !document.getElementById("confirm").open) {
      e.preventDefault();
      document.getElementById("goto-id").focus();
    }
  });
  setLiveState();
}

async function start() {
  setupChrome();
  await boot();
}

// Loads the sidecar's settings, then the view and the live stream.
async function boot() {
  try {
    state.config = await api("/api/config");
  } catch (e) {
    if (e.status === 401 || e.status === 403) { keyPrompt(e); return; }
    showError(e, () => location.reload());
    return;
  }
  if (state.config.readOnly) {
    const b = document.getElementById("banner");
    b.textContent = "Read-only: this dashboard shows state but takes no actions.";
    b.hidden = false;
  }
  if (state.config.entities) document.getElementById("nav-entities").hidden = false;
  route();
  connectLive();
}

start();
