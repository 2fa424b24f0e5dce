#!/usr/bin/env bash
# Runs every test Outrigger has: the Rust unit and service tests, then the SDK suites against
# a freshly built binary, once on SQLite and once on Postgres. Installs what the suites need: a
# Postgres server (tests/postgres.sh: Debian's package when none is reachable) and a Python venv
# with the pinned SDK.
# Ends with one line "N passed, N failed" over all suites; exits non-zero if anything failed.
set -uo pipefail
cd "$(dirname "$0")"

passed=0
failed=0
status=0

# Sums cargo's per-binary "test result:" lines.
run_cargo_tests() {
  local log
  log=$(mktemp)
  cargo test --locked --all-targets 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  local p f
  p=$(grep -Eo '[0-9]+ passed' "$log" | awk '{s+=$1} END {print s+0}')
  f=$(grep -Eo '[0-9]+ failed' "$log" | awk '{s+=$1} END {print s+0}')
  # A build failure produces no result lines; count it as a failure so it cannot pass silently.
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
  passed=$((passed + p)); failed=$((failed + f))
  [ "$rc" -eq 0 ] || status=1
  rm -f "$log"
}

# Adds the closing "N passed, N failed" line of an SDK suite run on one store.
run_sdk_suite() {
  local log
  log=$(mktemp)
  OUTRIGGER_TEST_STORE="$2" sdk-tests/run.sh "$1" 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  local line p f
  line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -1)
  p=$(echo "$line" | awk '{print $1+0}')
  f=$(echo "$line" | awk '{print $3+0}')
  if [ "$rc" -ne 0 ] && [ "${f:-0}" -eq 0 ]; then f=1; fi
  passed=$((passed + ${p:-0})); failed=$((failed + ${f:-0}))
  [ "$rc" -eq 0 ] || status=1
  rm -f "$log"
}

# Adds the closing "N passed, N failed" line of the dashboard's browser tests.
run_dashboard_suite() {
  local log
  log=$(mktemp)
  sdk-tests/dashboard/run.sh 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  local line p f
  line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -1)
  p=$(echo "$line" | awk '{print $1+0}')
  f=$(echo "$line" | awk '{print $3+0}')
  if [ "$rc" -ne 0 ] && [ "${f:-0}" -eq 0 ]; then f=1; fi
  passed=$((passed + ${p:-0})); failed=$((failed + ${f:-0}))
  [ "$rc" -eq 0 ] || status=1
  rm -f "$log"
}

# The Postgres store tests read OUTRIGGER_TEST_POSTGRES_URL (and the restart test
# OUTRIGGER_TEST_POSTGRES_CLUSTER); without a server they cannot run, which counts as a failure.
echo "== Postgres server for the tests"
have_postgres=0
if pg_env=$(tests/postgres.sh); then
  while IFS= read -r line; do
    if [ -n "$line" ]; then export "$line"; echo "$line"; fi
  done <<<"$pg_env"
  have_postgres=1
else
  echo "test.sh: no Postgres server could be had; the Postgres tests cannot run"
  failed=$((failed + 1)); status=1
fi

echo "== Rust unit and service tests"
run_cargo_tests

echo "== Building the release binary for the SDK suites"
if cargo build --locked --release; then
  export OUTRIGGER_BIN="$PWD/target/release/outrigger"
  echo "== Python SDK suite on SQLite"
  run_sdk_suite python sqlite
  if [ "$have_postgres" -eq 1 ]; then
    echo "== Python SDK suite on Postgres (with the multi-sidecar and Postgres restart tests)"
    run_sdk_suite python postgres
  fi
  echo "== Dashboard browser tests (headless Chromium, Python SDK orchestrations)"
  run_dashboard_suite
else
  failed=$((failed + 1)); status=1
fi

echo "$passed passed, $failed failed"
exit "$status"
