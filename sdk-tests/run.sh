#!/usr/bin/env bash
# Runs the SDK test suites against an outrigger binary.
#
#   sdk-tests/run.sh [python] [python-dapr] [rust]   (no argument: every suite)
#
# Builds target/release/outrigger with cargo unless OUTRIGGER_BIN names a binary.
# OUTRIGGER_TEST_STORE=postgres runs the suites with Postgres as the sidecars' store
# (default: sqlite); without OUTRIGGER_TEST_POSTGRES_URL it calls tests/postgres.sh to get one.
# Extra pytest options can be passed through PYTEST_ADDOPTS, e.g.
#   PYTEST_ADDOPTS="-k timers -x" sdk-tests/run.sh python
# The last line printed is always "N passed, N failed"; the exit status is
# non-zero when anything failed or errored, or when no test ran.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)

passed=0
failed=0
store=${OUTRIGGER_TEST_STORE:-sqlite}

finish() {
    echo "$passed passed, $failed failed"
    if [ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]; then exit 0; fi
    exit 1
}

run_python() {
    local dir="$HERE/python"
    local venv="$dir/.venv"
    if [ ! -x "$venv/bin/python" ]; then
        echo "sdk-tests: creating $venv" >&2
        python3 -m venv "$venv" || return 1
    fi
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$dir/requirements.txt" || return 1

    local results="$dir/.results"
    local xml="$results/junit-$store.xml"
    mkdir -p "$results"
    rm -f "$xml"
    (cd "$dir" && "$venv/bin/python" -m pytest -q --junitxml="$xml")
    local rc=$?

    local counts
    counts=$("$venv/bin/python" - "$xml" <<'EOF'
import sys
import xml.etree.ElementTree as ET

try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError):
    print("0 0 0")
    raise SystemExit
passed = failed = skipped = 0
for case in root.iter("testcase"):
    tags = {child.tag for child in case}
    if tags & {"failure", "error"}:
        failed += 1
    elif "skipped" in tags:
        skipped += 1
    else:
        passed += 1
print(passed, failed, skipped)
EOF
)
    local p f s
    read -r p f s <<<"$counts"
    # pytest failing without a failed test case (internal error, no tests) still fails.
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
    if [ "$s" -gt 0 ]; then echo "python ($store): $s skipped"; fi
    echo "python ($store): $p passed, $f failed"
    passed=$((passed + p))
    failed=$((failed + f))
    return 0
}

# Dapr's Python SDK (durabletask-dapr, the older Dapr dialect) against the --dapr-port
# listener, in its own virtualenv; the sidecar runs on an in-memory SQLite.
run_python_dapr() {
    local dir="$HERE/python-dapr"
    local venv="$dir/.venv"
    if [ ! -x "$venv/bin/python" ]; then
        echo "sdk-tests: creating $venv" >&2
        python3 -m venv "$venv" || return 1
    fi
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$dir/requirements.txt" || return 1
    local log
    log=$(mktemp)
    (cd "$dir" && "$venv/bin/python" -m pytest -q -p no:cacheprovider) 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    local p f
    p=$(grep -Eo '[0-9]+ passed' "$log" | tail -1 | awk '{print $1+0}')
    f=$(grep -Eo '[0-9]+ (failed|error|errors)' "$log" | awk '{s+=$1} END {print s+0}')
    rm -f "$log"
    if [ "$rc" -ne 0 ] && [ "${f:-0}" -eq 0 ]; then f=1; fi
    echo "python-dapr: ${p:-0} passed, ${f:-0} failed"
    passed=$((passed + ${p:-0}))
    failed=$((failed + ${f:-0}))
    return 0
}

# The Rust SDK (dapr-durabletask, Dapr dialect) against the --dapr-port listener. Its own Cargo
# project and target dir; each scenario starts its own sidecar on an in-memory (or file) SQLite.
run_rust() {
    local dir="$HERE/rust"
    if ! (cd "$dir" && CARGO_TARGET_DIR="$dir/target" cargo build --locked -q); then
        echo "sdk-tests: building the Rust SDK suite failed" >&2
        return 1
    fi
    local log
    log=$(mktemp)
    "$dir/target/debug/outrigger-rust-sdk-tests" 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    local line p f
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -1)
    rm -f "$log"
    p=$(echo "$line" | awk '{print $1+0}')
    f=$(echo "$line" | awk '{print $3+0}')
    if [ "$rc" -ne 0 ] && [ "${f:-0}" -eq 0 ]; then f=1; fi
    echo "rust: ${p:-0} passed, ${f:-0} failed"
    passed=$((passed + ${p:-0}))
    failed=$((failed + ${f:-0}))
    return 0
}

suites=("$@")
if [ ${#suites[@]} -eq 0 ]; then suites=(python python-dapr rust); fi
for suite in "${suites[@]}"; do
    case "$suite" in
        python | python-dapr | rust) ;;
        *) echo "sdk-tests: unknown suite '$suite' (known: python, python-dapr, rust)" >&2; failed=$((failed + 1)); finish ;;
    esac
done

case "$store" in
    sqlite) ;;
    postgres)
        if [ -z "${OUTRIGGER_TEST_POSTGRES_URL:-}" ]; then
            if ! pg_env=$("$ROOT/tests/postgres.sh"); then
                echo "sdk-tests: no Postgres server for OUTRIGGER_TEST_STORE=postgres" >&2
                failed=$((failed + 1))
                finish
            fi
            while IFS= read -r line; do
                if [ -n "$line" ]; then export "$line"; fi
            done <<<"$pg_env"
        fi
        ;;
    *) echo "sdk-tests: unknown OUTRIGGER_TEST_STORE '$store' (known: sqlite, postgres)" >&2; failed=$((failed + 1)); finish ;;
esac
export OUTRIGGER_TEST_STORE="$store"

if [ -z "${OUTRIGGER_BIN:-}" ]; then
    if ! (cd "$ROOT" && cargo build --release); then
        echo "sdk-tests: cargo build --release failed" >&2
        failed=$((failed + 1))
        finish
    fi
    export OUTRIGGER_BIN="$ROOT/target/release/outrigger"
fi

for suite in "${suites[@]}"; do
    if ! "run_${suite//-/_}"; then
        echo "sdk-tests: could not set up the $suite suite" >&2
        failed=$((failed + 1))
    fi
done
finish
