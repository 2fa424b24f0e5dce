// Starts a fresh outrigger for a suite: port 0 on 127.0.0.1, a new SQLite file, ready once it
// logs "listening addr=<ip:port>". Its output goes to a log file for the whole run.
"use strict";

const { spawn } = require("node:child_process");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");

const ROOT = path.resolve(__dirname, "..", "..");

function binary() {
  if (process.env.OUTRIGGER_BIN) return process.env.OUTRIGGER_BIN;
  for (const profile of ["release", "debug"]) {
    const candidate = path.join(ROOT, "target", profile, "outrigger");
    if (fs.existsSync(candidate)) return candidate;
  }
  throw new Error("no outrigger binary: run `cargo build --release` or set OUTRIGGER_BIN");
}

/** Starts the sidecar; resolves to { address, stop() } once it listens. */
function startSidecar(logPath, timeoutMs = 30000) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "outrigger-js-"));
  const url = `sqlite://${path.join(dir, "hub.db")}`;
  fs.mkdirSync(path.dirname(logPath), { recursive: true });
  const log = fs.createWriteStream(logPath, { flags: "a" });
  const child = spawn(binary(), ["--host", "127.0.0.1", "--port", "0", "--database-url", url], {
    env: { ...process.env, NO_COLOR: "1" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  return new Promise((resolve, reject) => {
    let seen = "";
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`outrigger did not log 'listening addr=' within ${timeoutMs} ms:\n${seen}`));
    }, timeoutMs);
    const onData = (chunk) => {
      const text = chunk.toString();
      log.write(text);
      if (seen !== null) {
        seen += text;
        const match = /listening addr=(\S+)/.exec(seen.replace(/\x1b\[[0-9;]*m/g, ""));
        if (match) {
          seen = null;
          clearTimeout(timer);
          resolve({
            address: match[1].replace(/[",]/g, ""),
            stop: () =>
              new Promise((done) => {
                child.once("exit", () => {
                  log.end();
                  fs.rmSync(dir, { recursive: true, force: true });
                  done();
                });
                child.kill("SIGTERM");
              }),
          });
        }
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.once("exit", (code) => {
      if (seen !== null) {
        clearTimeout(timer);
        reject(new Error(`outrigger exited with ${code} before listening:\n${seen}`));
      }
    });
  });
}

module.exports = { startSidecar };
