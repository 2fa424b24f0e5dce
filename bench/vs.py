"""Side by side: the same workload on Outrigger and on a peer, alternating, fresh stores.

Run by `./bench.sh --vs PEER`, which installs what each peer needs first. Every round runs
Outrigger, then the peer (A B A B ...), each on a store of its own made for that run, every
server on 127.0.0.1. It prints, per figure, the median of each side over the rounds and the
ratio Outrigger / peer, and writes every run's figures to a JSON file.

Peers:
  durabletask-go  its sidecar (SQLite) against an outrigger on SQLite, both driven by
                  outrigger-bench (same protocol, same raw worker)
  restate         hello5 as five ctx.run steps in the Restate TypeScript SDK on restate-server,
                  against hello5 as five activities in @microsoft/durabletask-js on an
                  outrigger on SQLite
  dbos            hello5 as five steps in the DBOS TypeScript SDK on Postgres, against the
                  durabletask-js hello5 on an outrigger on the same Postgres
Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"== {message}", file=sys.stderr, flush=True)


def cpu_seconds(pid: int, children: bool = False) -> float | None:
    """utime+stime of a live process (plus its reaped children's, with `children`)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    # fields[0] is field 3 (state); utime, stime, cutime, cstime are fields 14-17.
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_line(process: subprocess.Popen, log_path: Path, pattern: str, timeout: float = 60) -> re.Match:
    """Waits until the process's log has a line matching `pattern`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        if m := re.search(pattern, text):
            return m
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited ({process.returncode}):\n{text[-2000:]}")
        time.sleep(0.05)
    raise RuntimeError(f"{process.args[0]} did not log /{pattern}/ within {timeout:.0f} s")


def wait_for_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


class Server:
    """A server process started for one run; stopped (and its CPU read) by stop()."""

    def __init__(self, argv: list[str], log_path: Path, env: dict | None = None, cwd: Path | None = None):
        self.log_path = log_path
        self.log_file = open(log_path, "w")
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NO_COLOR": "1", **(env or {})},
            cwd=cwd,
        )
        self.cpu_at_start: float | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def mark(self) -> None:
        """Starts counting CPU from now (after startup and migrations)."""
        self.cpu_at_start = cpu_seconds(self.pid)

    def stop(self) -> float | None:
        """Stops the process; returns the CPU seconds it used since mark()."""
        now = cpu_seconds(self.pid)
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log_file.close()
        if now is None or self.cpu_at_start is None:
            return None
        return now - self.cpu_at_start


class Postgres:
    """Fresh databases on a server: the local cluster (as the postgres OS user) or an admin URL."""

    def __init__(self, admin_url: str | None, port: int | None):
        self.admin_url, self.port = admin_url, port
        self.postmaster = None
        if port is not None:
            out = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True).stdout
            for line in out.splitlines():
                parts = line.split()
                if len(parts) >= 6 and parts[2] == str(port):
                    pid_file = Path(parts[5]) / "postmaster.pid"
                    try:
                        self.postmaster = int(pid_file.read_text().split()[0])
                    except (OSError, ValueError, IndexError):
                        pass

    def psql(self, sql: str) -> None:
        if self.port is not None:
            cmd = ["runuser", "-u", "postgres", "--", "psql", "-q", "-p", str(self.port), "-v", "ON_ERROR_STOP=1"]
        else:
            cmd = ["psql", "-q", self.admin_url, "-v", "ON_ERROR_STOP=1"]
        cmd += ["-c", "SET client_min_messages = warning", "-c", sql]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)

    def fresh(self, name: str) -> str:
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        if self.port is not None:
            self.psql(
                "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'outrigger_bench') THEN "
                "CREATE ROLE outrigger_bench LOGIN PASSWORD 'outrigger_bench'; END IF; END $$"
            )
            self.psql(f"CREATE DATABASE {name} OWNER outrigger_bench")
            return f"postgres://outrigger_bench:outrigger_bench@127.0.0.1:{self.port}/{name}"
        self.psql(f"CREATE DATABASE {name}")
        return self.admin_url.rsplit("/", 1)[0] + "/" + name

    def drop(self, name: str) -> None:
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def cpu(self) -> float | None:
        """CPU of the whole cluster so far: the postmaster, its live and its exited children."""
        if self.postmaster is None:
            return None
        total = cpu_seconds(self.postmaster, children=True) or 0.0
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    stat = (proc / "stat").read_text()
                except OSError:
                    continue
                if int(stat[stat.rfind(")") + 2 :].split()[1]) == self.postmaster:
                    total += cpu_seconds(int(proc.name)) or 0.0
        return total


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


# ---------------------------------------------------------------- durabletask-go


def outrigger_bench(args, address_args: list[str], label: str, out: Path) -> list[dict]:
    """hello5 at --concurrency and latency1 (one in flight) through outrigger-bench."""
    runs = []
    for workload, count, concurrency in [
        ("hello5", args.count, args.concurrency),
        ("latency1", args.latency_count, 1),
    ]:
        results = out / f"{label}-{workload}.json"
        cmd = [args.bench, *address_args, "--workload", workload, "--count", str(count),
               "--concurrency", str(concurrency), "--timeout", "900", "--results", str(results)]
        subprocess.run(cmd, stdout=subprocess.DEVNULL, check=False)
        if results.exists():
            runs.extend(json.loads(results.read_text())["runs"])
    return runs


def figures_from_bench(runs: list[dict]) -> dict:
    f = {}
    for r in runs:
        w = r["workload"]
        latency = r.get("latency_ms") or {}
        # CPU seconds per 1,000 orchestrations is also CPU milliseconds per orchestration.
        cpu = r.get("sidecar_cpu_s_per_1000_orchestrations")
        f[f"{w} ok"] = f"{r['completed']}/{r['count']}"
        if w == "hello5":
            f["hello5 orch/s"] = r.get("orchestrations_per_s")
            f["hello5 p50 ms"] = latency.get("p50")
            f["hello5 p99 ms"] = latency.get("p99")
            f["hello5 server CPU s/1k"] = cpu
        else:
            f[f"{w} p50 ms"] = latency.get("p50")
            f[f"{w} p99 ms"] = latency.get("p99")
            f[f"{w} server CPU ms/orch"] = cpu
    return f


def run_outrigger_bench_side(args, work: Path, round_no: int) -> dict:
    runs = outrigger_bench(args, ["--sidecar", args.outrigger, "--backend", "sqlite"], f"outrigger-{round_no}", work)
    return figures_from_bench(runs)


def run_durabletask_go(args, work: Path, round_no: int) -> dict:
    store = work / f"dtgo-{round_no}"
    store.mkdir()
    server = Server([args.dtgo, "--host", "127.0.0.1", "--port", "0", "--db", str(store / "dtgo.db")], store / "log")
    try:
        m = wait_for_line(server.process, server.log_path, r"server listening at (\S+)")
        runs = outrigger_bench(args, ["--address", f"http://{m.group(1)}", "--sidecar-pid", str(server.pid),
                                      "--backend", "sqlite"], f"dtgo-{round_no}", work)
    finally:
        server.stop()
    return figures_from_bench(runs)


# ---------------------------------------------------------------- JavaScript SDK peers


def run_node(args, argv: list[str], count: int, concurrency: int, env: dict | None = None) -> dict:
    cmd = [args.node, str(Path(args.peers) / "hello5.mjs"), *argv, "--count", str(count), "--concurrency", str(concurrency)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=args.peers, timeout=1800,
                          env={**os.environ, "RESTATE_LOGGING": "ERROR", **(env or {})})
    lines = [l for l in done.stdout.splitlines() if l.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(lines[-1])


def js_figures(one: dict, many: dict, server_cpu: tuple, db_cpu: tuple) -> dict:
    """Figures of a JS run: `many` at --concurrency, `one` at one in flight."""
    f = {
        "hello5 ok": f"{many['completed']}/{many['completed'] + many['failed']}",
        "hello5 wf/s": many["completed"] / many["elapsed_s"] if many["elapsed_s"] else None,
        "hello5 p50 ms": percentile(many["latencies_ms"], 50),
        "hello5 p99 ms": percentile(many["latencies_ms"], 99),
        "hello5 app CPU s/1k": 1000 * many["app_cpu_s"] / max(1, many["completed"]),
        "one in flight p50 ms": percentile(one["latencies_ms"], 50),
        "one in flight app CPU ms/wf": 1000 * one["app_cpu_s"] / max(1, one["completed"]),
    }
    if server_cpu[1] is not None:
        f["hello5 server CPU s/1k"] = 1000 * server_cpu[1] / max(1, many["completed"])
    if server_cpu[0] is not None:
        f["one in flight server CPU ms/wf"] = 1000 * server_cpu[0] / max(1, one["completed"])
    if db_cpu[1] is not None:
        f["hello5 Postgres CPU s/1k"] = 1000 * db_cpu[1] / max(1, many["completed"])
    if db_cpu[0] is not None:
        f["one in flight Postgres CPU ms/wf"] = 1000 * db_cpu[0] / max(1, one["completed"])
    errors = many.get("errors", []) + one.get("errors", [])
    if errors:
        log(f"errors: {errors[:3]}")
    return f


def measured(server: Server | None, pg: Postgres | None, run) -> tuple[dict, float | None, float | None]:
    """Runs `run()`, returning its result and the server's and Postgres's CPU seconds over it."""
    s0 = cpu_seconds(server.pid) if server else None
    p0 = pg.cpu() if pg else None
    result = run()
    s1 = cpu_seconds(server.pid) if server else None
    p1 = pg.cpu() if pg else None
    return result, (s1 - s0 if s0 is not None and s1 is not None else None), (p1 - p0 if p0 is not None and p1 is not None else None)


def start_outrigger(args, work: Path, label: str, database_url: str) -> tuple[Server, str]:
    server = Server([args.outrigger, "--host", "127.0.0.1", "--port", "0", "--database-url", database_url],
                    work / f"{label}.log")
    m = wait_for_line(server.process, server.log_path, r"listening addr=(\S+)")
    return server, m.group(1)


def run_durabletask_js(args, work: Path, round_no: int, pg: Postgres | None) -> dict:
    name = f"outrigger_vs_{round_no}_{os.getpid()}"
    if pg:
        url = pg.fresh(name)
    else:
        (work / f"dtjs-{round_no}").mkdir()
        url = f"sqlite://{work / f'dtjs-{round_no}' / 'outrigger.db'}"
    server, address = start_outrigger(args, work, f"outrigger-{round_no}", url)
    try:
        one, s1, p1 = measured(server, pg, lambda: run_node(args, ["durabletask", "--address", address], args.latency_count, 1))
        many, s2, p2 = measured(server, pg, lambda: run_node(args, ["durabletask", "--address", address], args.count, args.concurrency))
    finally:
        server.stop()
        if pg:
            pg.drop(name)
    return js_figures(one, many, (s1, s2), (p1, p2))


def run_restate(args, work: Path, round_no: int) -> dict:
    base = work / f"restate-{round_no}"
    base.mkdir()
    ingress, admin, node = free_port(), free_port(), free_port()
    # Loopback only, telemetry off, the server's own defaults otherwise (fsync of its log on).
    (base / "config.toml").write_text(
        "disable-telemetry = true\n"
        'listen-mode = "tcp"\n'
        f'bind-address = "127.0.0.1:{node}"\n'
        f'advertised-address = "http://127.0.0.1:{node}/"\n'
        f'[admin]\nbind-address = "127.0.0.1:{admin}"\n'
        f'[ingress]\nbind-address = "127.0.0.1:{ingress}"\n'
    )
    server = Server([args.restate_server, "--config-file", str(base / "config.toml"), "--base-dir", str(base / "data"),
                     "--no-logo"], base / "log")
    try:
        wait_for_http(f"http://127.0.0.1:{admin}/health")
        wait_for_http(f"http://127.0.0.1:{ingress}/restate/health")
        argv = ["restate", "--ingress", f"http://127.0.0.1:{ingress}", "--admin", f"http://127.0.0.1:{admin}"]
        one, s1, _ = measured(server, None, lambda: run_node(args, argv, args.latency_count, 1))
        many, s2, _ = measured(server, None, lambda: run_node(args, argv, args.count, args.concurrency))
    finally:
        server.stop()
    return js_figures(one, many, (s1, s2), (None, None))


def run_dbos(args, work: Path, round_no: int, pg: Postgres) -> dict:
    figures = []
    for label, count, concurrency in [("one", args.latency_count, 1), ("many", args.count, args.concurrency)]:
        name = f"dbos_vs_{round_no}_{label}_{os.getpid()}"
        url = pg.fresh(name)
        try:
            # DBOS runs inside the app, so all its CPU is the app's and Postgres's.
            figures.append(measured(None, pg, lambda: run_node(args, ["dbos", "--database-url", url], count, concurrency)))
        finally:
            pg.drop(name)
    (one, _, p1), (many, _, p2) = figures
    return js_figures(one, many, (None, None), (p1, p2))


# ---------------------------------------------------------------- the table

LOWER_IS_BETTER = ("ms", "CPU")


def table(peer: str, rounds: list[tuple[dict, dict]]) -> str:
    keys = []
    for ours, theirs in rounds:
        for k in list(ours) + list(theirs):
            if k not in keys:
                keys.append(k)
    lines = [f"| figure | Outrigger | {peer} | Outrigger / {peer} | better |", "|---|---|---|---|---|"]
    for k in keys:
        a = [r[0].get(k) for r in rounds]
        b = [r[1].get(k) for r in rounds]
        if any(isinstance(v, str) for v in a + b):
            lines.append(f"| {k} | {', '.join(map(str, a))} | {', '.join(map(str, b))} | | |")
            continue
        a = [v for v in a if v is not None]
        b = [v for v in b if v is not None]
        ma = statistics.median(a) if a else None
        mb = statistics.median(b) if b else None
        ratio = f"{ma / mb:.2f}" if ma is not None and mb else "–"
        better = ""
        if ma is not None and mb is not None and ma != mb:
            lower = any(word in k for word in LOWER_IS_BETTER)
            better = "Outrigger" if (ma < mb) == lower else peer
        lines.append(f"| {k} | {fmt(ma)} | {fmt(mb)} | {ratio} | {better} |")
    return "\n".join(lines)


def fmt(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("peer", choices=["durabletask-go", "restate", "dbos"])
    p.add_argument("--rounds", type=int, default=2, help="A B rounds (default 2: A B A B)")
    p.add_argument("--count", type=int, default=500, help="hello5 runs per side and round")
    p.add_argument("--concurrency", type=int, default=50, help="hello5 runs in flight")
    p.add_argument("--latency-count", type=int, default=50, help="runs at one in flight")
    p.add_argument("--outrigger", required=True)
    p.add_argument("--bench", required=True)
    p.add_argument("--dtgo")
    p.add_argument("--node")
    p.add_argument("--peers", help="bench/peers with its node_modules")
    p.add_argument("--restate-server")
    p.add_argument("--pg-port", type=int, help="the local cluster's port (psql as the postgres OS user)")
    p.add_argument("--pg-url", help="an admin URL of a server where databases may be created")
    p.add_argument("--results", required=True, help="JSON file for every run's figures")
    args = p.parse_args()
    for name in ("outrigger", "bench", "dtgo", "node", "peers", "restate_server", "results"):
        if getattr(args, name):
            setattr(args, name, os.path.abspath(getattr(args, name)))

    needed = {"durabletask-go": ["dtgo"], "restate": ["node", "restate_server"], "dbos": ["node"]}[args.peer]
    for name in ["outrigger", "bench", *needed]:
        path = getattr(args, name)
        if not path or not os.access(path, os.X_OK):
            print(f"vs.py: --{name.replace('_', '-')} {path or ''} is not an executable", file=sys.stderr)
            return 2

    pg = None
    if args.peer == "dbos":
        if args.pg_port is None and args.pg_url is None:
            print("vs.py: dbos needs Postgres (--pg-port or --pg-url)", file=sys.stderr)
            return 2
        pg = Postgres(args.pg_url, args.pg_port)

    work = Path(tempfile.mkdtemp(prefix="outrigger-vs-"))
    rounds = []
    try:
        for i in range(1, args.rounds + 1):
            load = os.getloadavg()[0]
            log(f"round {i}/{args.rounds}: Outrigger (load {load:.1f})")
            if args.peer == "durabletask-go":
                ours = run_outrigger_bench_side(args, work, i)
            else:
                ours = run_durabletask_js(args, work, i, pg)
            log(f"round {i}/{args.rounds}: {args.peer} (load {os.getloadavg()[0]:.1f})")
            if args.peer == "durabletask-go":
                theirs = run_durabletask_go(args, work, i)
            elif args.peer == "restate":
                theirs = run_restate(args, work, i)
            else:
                theirs = run_dbos(args, work, i, pg)
            rounds.append((ours, theirs))
            ours["load_average_1m_before"] = load
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"Outrigger vs {args.peer}: {args.rounds} alternating rounds, medians; "
          f"hello5 {args.count} runs at {args.concurrency} in flight, {args.latency_count} at one in flight")
    print()
    print(table(args.peer, [(dict((k, v) for k, v in o.items() if k != "load_average_1m_before"), t) for o, t in rounds]))
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()
    document = {
        "peer": args.peer,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": commit,
        "cpu": next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                     if l.startswith("model name")), None),
        "cores": os.cpu_count(),
        "rounds": [{"outrigger": o, args.peer: t} for o, t in rounds],
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(document, indent=2) + "\n")
    log(f"results written to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
