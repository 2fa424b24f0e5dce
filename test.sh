#!/usr/bin/env bash
# Runs every test Outrigger has: the Rust unit and service tests, then the SDK suites against
# a freshly built binary. Installs what the suites need (a Python venv with the pinned SDK).
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

# Adds the closing "N passed, N failed" line of an SDK suite.
run_sdk_suite() {
  local log
  log=$(mktemp)
  sdk-tests/run.sh "$1" 2>&1 | tee "$log"
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

echo "== Rust unit and service tests"
run_cargo_tests

echo "== Building the release binary for the SDK suites"
if cargo build --locked --release; then
  export OUTRIGGER_BIN="$PWD/target/release/outrigger"
  echo "== Python SDK suite"
  run_sdk_suite python
else
  failed=$((failed + 1)); status=1
fi

echo "$passed passed, $failed failed"
exit "$status"
