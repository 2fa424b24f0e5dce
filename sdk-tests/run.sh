#!/usr/bin/env bash
# Runs the SDK test suites against an outrigger binary.
#
#   sdk-tests/run.sh [python] [python-dapr] [rust] [js] [go] [java] [polyglot] [dotnet]
#   (no argument: every suite; dotnet only with `dotnet` on PATH)
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

# Adds a suite's closing "N passed, N failed" line (from its log $2) to the totals, under the
# suite's name $1; a runner that failed without saying so counts as one failure.
add_counts() {
    local name=$1 log=$2 rc=$3
    local line p f
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -1)
    p=$(echo "$line" | awk '{print $1+0}')
    f=$(echo "$line" | awk '{print $3+0}')
    p=${p:-0}; f=${f:-0}
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
    echo "$name ($store): $p passed, $f failed"
    passed=$((passed + p))
    failed=$((failed + f))
}

# JavaScript: @microsoft/durabletask-js from npm, pinned in package.json / package-lock.json.
run_js() {
    local dir="$HERE/js"
    if [ ! -d "$dir/node_modules/@microsoft/durabletask-js" ]; then
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) || return 1
    fi
    local log
    log=$(mktemp)
    (cd "$dir" && node suite.js) 2>&1 | tee "$log"
    add_counts js "$log" "${PIPESTATUS[0]}"
    rm -f "$log"
}

# Go: github.com/microsoft/durabletask-go v0.6.0 through the Go module proxy (go.mod/go.sum).
run_go() {
    local dir="$HERE/go"
    local log
    log=$(mktemp)
    (cd "$dir" && go mod download >/dev/null 2>&1; go test -count=1 -v ./...) 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    local p f
    p=$(grep -c -E '^--- PASS' "$log")
    f=$(grep -c -E '^--- FAIL' "$log")
    printf '\n%s passed, %s failed\n' "$p" "$f" >>"$log" # its output may end without a newline
    add_counts go "$log" "$rc"
    rm -f "$log"
}

# Java: com.microsoft:durabletask-client from Maven Central, a Maven project.
run_java() {
    local dir="$HERE/java"
    local log
    log=$(mktemp)
    (cd "$dir" && rm -rf target/surefire-reports && mvn -q -B -ntp test) 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    local p=0 f=0 report
    for report in "$dir"/target/surefire-reports/TEST-*.xml; do
        [ -f "$report" ] || continue
        local tests failures errors skipped
        tests=$(grep -o -m1 'tests="[0-9]*"' "$report" | grep -o '[0-9]*')
        failures=$(grep -o -m1 'failures="[0-9]*"' "$report" | grep -o '[0-9]*')
        errors=$(grep -o -m1 'errors="[0-9]*"' "$report" | grep -o '[0-9]*')
        skipped=$(grep -o -m1 'skipped="[0-9]*"' "$report" | grep -o '[0-9]*')
        p=$((p + tests - failures - errors - skipped))
        f=$((f + failures + errors))
    done
    if [ $((p + f)) -eq 0 ]; then
        echo "sdk-tests: the Java suite left no test reports in $dir/target/surefire-reports" >&2
        f=1
    fi
    printf '\n%s passed, %s failed\n' "$p" "$f" >>"$log" # its output may end without a newline
    add_counts java "$log" "$rc"
    rm -f "$log"
}

# Polyglot: a Python client, a JavaScript worker hosting the orchestrations and a Python worker
# hosting the activities, both with work-item filters.
run_polyglot() {
    local venv="$HERE/python/.venv"
    if [ ! -x "$venv/bin/python" ]; then
        python3 -m venv "$venv" || return 1
    fi
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$HERE/python/requirements.txt" || return 1
    if [ ! -d "$HERE/js/node_modules/@microsoft/durabletask-js" ]; then
        (cd "$HERE/js" && npm ci --no-audit --no-fund --loglevel=error) || return 1
    fi
    local log
    log=$(mktemp)
    (cd "$HERE/polyglot" && "$venv/bin/python" -m pytest -q -p no:cacheprovider test_polyglot.py) 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    local p f
    p=$(grep -Eo '[0-9]+ passed' "$log" | tail -1 | awk '{print $1+0}')
    f=$(grep -Eo '[0-9]+ (failed|error)' "$log" | awk '{s+=$1} END {print s+0}')
    echo "${p:-0} passed, ${f:-0} failed" >>"$log"
    add_counts polyglot "$log" "$rc"
    rm -f "$log"
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

# The .NET scenario program (dotnet/) against one sidecar of its own, on the selected store.
run_dotnet() {
    local dir="$HERE/dotnet"
    if ! command -v dotnet >/dev/null 2>&1; then
        echo "sdk-tests: the dotnet suite needs the .NET 10 SDK (dotnet) on PATH" >&2
        return 1
    fi
    local logs="$dir/.logs/$(date +%Y%m%d-%H%M%S)-$$"
    mkdir -p "$logs"
    echo "sdk-tests: building the .NET scenario program (log: $logs/build.log)" >&2
    if ! dotnet build "$dir/Scenarios.csproj" -c Release -nologo >"$logs/build.log" 2>&1; then
        tail -40 "$logs/build.log" >&2
        return 1
    fi

    local url database=""
    if [ "$store" = postgres ]; then
        database="outrigger_dotnet_$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
        psql "$OUTRIGGER_TEST_POSTGRES_URL" -X -q -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$database\"" || return 1
        url=$(echo "$OUTRIGGER_TEST_POSTGRES_URL" | sed -E "s#^([a-z]+://[^/?]+)(/[^?]*)?#\1/$database#")
    else
        url="sqlite://$logs/outrigger.db"
    fi

    : >"$logs/sidecar.log"
    "$OUTRIGGER_BIN" --host 127.0.0.1 --port 0 --database-url "$url" >>"$logs/sidecar.log" 2>&1 &
    local sidecar=$!
    # Ready when it logs the address it listens on.
    local addr="" waited=0
    while [ -z "$addr" ] && [ "$waited" -lt 300 ] && kill -0 "$sidecar" 2>/dev/null; do
        addr=$(grep -o 'listening addr=[^ ]*' "$logs/sidecar.log" | head -1 | cut -d= -f2)
        [ -n "$addr" ] || { sleep 0.1; waited=$((waited + 1)); }
    done

    local rc=1
    if [ -n "$addr" ]; then
        OUTRIGGER_ADDRESS="http://$addr" dotnet "$dir/bin/Release/net10.0/Scenarios.dll" 2>"$logs/scenarios.err" | tee "$logs/scenarios.out"
        rc=${PIPESTATUS[0]}
    else
        echo "sdk-tests: the sidecar did not start (log: $logs/sidecar.log)" >&2
        tail -20 "$logs/sidecar.log" >&2
    fi
    kill "$sidecar" 2>/dev/null
    wait "$sidecar" 2>/dev/null
    if [ -n "$database" ]; then
        psql "$OUTRIGGER_TEST_POSTGRES_URL" -X -q -c "DROP DATABASE IF EXISTS \"$database\" WITH (FORCE)" >/dev/null 2>&1 ||
            echo "sdk-tests: left database $database behind" >&2
    fi

    local line p f
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$logs/scenarios.out" 2>/dev/null | tail -1)
    p=$(echo "$line" | awk '{print $1+0}')
    f=$(echo "$line" | awk '{print $3+0}')
    # A program that crashed or never ran still fails.
    if [ "$rc" -ne 0 ] && [ "${f:-0}" -eq 0 ]; then f=1; fi
    echo "dotnet ($store): ${p:-0} passed, ${f:-0} failed (logs: $logs)"
    passed=$((passed + ${p:-0}))
    failed=$((failed + ${f:-0}))
    return 0
}

suites=("$@")
if [ ${#suites[@]} -eq 0 ]; then
    suites=(python python-dapr rust js go java polyglot)
    if command -v dotnet >/dev/null 2>&1; then suites+=(dotnet); fi
fi
for suite in "${suites[@]}"; do
    case "$suite" in
        python | python-dapr | rust | js | go | java | polyglot | dotnet) ;;
        *) echo "sdk-tests: unknown suite '$suite' (known: python, python-dapr, rust, js, go, java, polyglot, dotnet)" >&2; failed=$((failed + 1)); finish ;;
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
