#!/usr/bin/env bash
# Runs every test Outrigger has: the Rust unit and service tests, then the SDK suites against
# a freshly built binary, once on SQLite and once on Postgres. Installs what the suites need: a
# Postgres server (tests/postgres.sh: Debian's package when none is reachable), openssl, a
# Python venv with the pinned SDK, schemathesis (tests/http_fuzz.sh, its own venv), the
# JavaScript, Go and Java SDKs (npm, the Go module proxy, Maven), and podman for the image test
# (deploy/tests/run.sh). The .NET scenario program runs when the .NET
# 10 SDK (`dotnet`) is on PATH.
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

# Adds the closing "N passed, N failed" line of a suite run by its own script ($1): the
# deployment suite (image, manifests, TLS, keys, drain), the dashboard's browser tests and the
# HTTP API's schemathesis run.
run_script_suite() {
  local log
  log=$(mktemp)
  "$1" 2>&1 | tee "$log"
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
# Plain `cargo test` skips them when the URL is unset; here they are required.
export OUTRIGGER_TEST_REQUIRE_POSTGRES=1
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

# The HTTP listener's TLS tests (tests/http_auth.rs) make their certificates with openssl.
if ! command -v openssl >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  echo "== Installing openssl for the TLS tests"
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y openssl >/dev/null \
    || { apt-get -o DPkg::Lock::Timeout=600 update >/dev/null \
         && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y openssl >/dev/null; }
fi

echo "== Style gates: cargo fmt --check, cargo clippy -D warnings"
if cargo fmt --check && cargo clippy --locked --all-targets -- -D warnings; then
  passed=$((passed + 1))
else
  failed=$((failed + 1)); status=1
fi

echo "== Rust unit and service tests"
run_cargo_tests

echo "== Building the release binary for the SDK suites"
if cargo build --locked --release; then
  export OUTRIGGER_BIN="$PWD/target/release/outrigger"
  echo "== HTTP API fuzzed with schemathesis against the OpenAPI document"
  run_script_suite tests/http_fuzz.sh
  echo "== Python SDK suite on SQLite"
  run_sdk_suite python sqlite
  echo "== JavaScript SDK suite on SQLite"
  run_sdk_suite js sqlite
  echo "== Go SDK suite on SQLite"
  run_sdk_suite go sqlite
  echo "== Java SDK suite on SQLite"
  run_sdk_suite java sqlite
  echo "== Polyglot suite (Python client, JavaScript and Python workers with filters) on SQLite"
  run_sdk_suite polyglot sqlite
  if [ "$have_postgres" -eq 1 ]; then
    echo "== Python SDK suite on Postgres (with the multi-sidecar and Postgres restart tests)"
    run_sdk_suite python postgres
    echo "== Polyglot suite on Postgres (client and workers on three sidecars)"
    run_sdk_suite polyglot postgres
  fi
  if command -v dotnet >/dev/null 2>&1; then
    echo "== .NET scenario program on SQLite"
    run_sdk_suite dotnet sqlite
    if [ "$have_postgres" -eq 1 ]; then
      echo "== .NET scenario program on Postgres"
      run_sdk_suite dotnet postgres
    fi
  else
    echo "== .NET scenario program: skipped (dotnet is not on PATH)"
  fi
  echo "== Dashboard browser tests (headless Chromium, Python SDK orchestrations)"
  run_script_suite sdk-tests/dashboard/run.sh
  echo "== Rust SDK suite (Dapr dialect) on SQLite"
  run_sdk_suite rust sqlite
  echo "== Dapr Python SDK suite (older Dapr dialect) on SQLite"
  run_sdk_suite python-dapr sqlite
  echo "== Deployment suite: container image, manifests, TLS, API keys, SIGTERM drain"
  run_script_suite deploy/tests/run.sh
else
  failed=$((failed + 1)); status=1
fi

echo "$passed passed, $failed failed"
exit "$status"
