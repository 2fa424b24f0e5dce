#!/usr/bin/env bash
# Profiles a release outrigger on SQLite under the hello5 workload, three runs on fresh stores:
#   1. perf record -g on the sidecar         -> perf-symbols.txt, perf-callers.txt
#   2. strace -c on the sidecar              -> strace.txt (fsync per orchestration below)
#   3. SQL statement log (sqlx::query=debug) -> statements.txt (statements per step below)
# Needs perf and strace, and the release binaries (./bench.sh builds them).
#
#   bench/profile.sh [COUNT]     (default 1000 orchestrations per run)
set -euo pipefail
cd "$(dirname "$0")/.."

count=${1:-1000}
out=bench-results/profile
bin=target/release/outrigger
bench=target/release/outrigger-bench
mkdir -p "$out"
tmp=$(mktemp -d)
pid=
cleanup() {
  [ -z "$pid" ] || kill "$pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

# Starts a sidecar on a fresh SQLite file with RUST_LOG=$1, logging to $out/sidecar-$2.log;
# sets pid and address.
start_sidecar() {
  local log="$out/sidecar-$2.log"
  RUST_LOG=$1 NO_COLOR=1 "$bin" --host 127.0.0.1 --port 0 --database-url "sqlite://$tmp/$2.db" 2>"$log" &
  pid=$!
  address=
  for _ in $(seq 300); do
    address=$(grep -o 'listening addr=[^ ]*' "$log" | head -1 | cut -d= -f2 || true)
    [ -n "$address" ] && return
    sleep 0.1
  done
  echo "the sidecar did not start; see $log" >&2
  exit 1
}

stop_sidecar() {
  kill "$pid" && wait "$pid" 2>/dev/null || true
  pid=
}

run_hello5() {
  "$bench" --address "http://$address" --sidecar-pid "$pid" --workload hello5 --count "$count" \
    --results "$out/$1.json" >/dev/null
}

echo "== perf record -g, $count hello5 orchestrations" >&2
start_sidecar info perf
perf record -q -F 999 -g -p "$pid" -o "$out/perf.data" 2>/dev/null &
perf_pid=$!
run_hello5 perf
kill -INT "$perf_pid"; wait "$perf_pid" || true
stop_sidecar
perf report -i "$out/perf.data" --no-children --sort dso,symbol --stdio --percent-limit 0.7 2>/dev/null \
  | grep -v '^$' >"$out/perf-symbols.txt" || true
perf report -i "$out/perf.data" --children --sort symbol --stdio --percent-limit 3 -g none 2>/dev/null \
  | grep -v '^$' >"$out/perf-callers.txt" || true

echo "== strace -c, $count hello5 orchestrations" >&2
start_sidecar info strace
strace -f -c -q -p "$pid" -o "$out/strace.txt" &
strace_pid=$!
sleep 0.5 # strace attaches to every thread before the load starts
run_hello5 strace
kill -INT "$strace_pid"; wait "$strace_pid" || true
stop_sidecar

echo "== SQL statements, $count hello5 orchestrations" >&2
start_sidecar "info,sqlx::query=debug" statements
run_hello5 statements
stop_sidecar
# sqlx logs each statement with its summary (the first words of the SQL).
grep 'sqlx::query' "$out/sidecar-statements.log" | sed -E 's/.*summary="([^"]*)".*/\1/' \
  | sort | uniq -c | sort -rn >"$out/statements.txt" || true

syncs=$(awk '$NF ~ /^(fsync|fdatasync)$/ {s += $4} END {print s + 0}' "$out/strace.txt")
statements=$(awk '{s += $1} END {print s + 0}' "$out/statements.txt")
# hello5: 6 orchestrator episodes and 5 activity completions per orchestration, plus its start.
steps=$((count * 12))
echo
echo "top symbols (self time):"
grep -E '^ +[0-9.]+%' "$out/perf-symbols.txt" | head -25
echo
echo "fsync+fdatasync: $syncs for $count orchestrations ($(awk -v s="$syncs" -v n="$count" 'BEGIN {printf "%.1f", s / n}') per orchestration)"
echo "SQL statements: $statements for $count orchestrations ($(awk -v s="$statements" -v n="$count" 'BEGIN {printf "%.1f", s / n}') per orchestration, $(awk -v s="$statements" -v n="$steps" 'BEGIN {printf "%.1f", s / n}') per step of 12)"
echo "details in $out/"
