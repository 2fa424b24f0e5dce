#!/usr/bin/env bash
# Fuzzes the HTTP API with schemathesis against a running sidecar: generated requests for every
# operation of the OpenAPI document the sidecar serves, each answer checked for no 5xx and for
# matching the document (status code, content type, headers, body schema).
#
#   tests/http_fuzz.sh [path/to/outrigger]     (default: target/release/outrigger)
#
# Installs schemathesis (pinned) into its own virtualenv, tests/.venv-schemathesis. Two runs:
# every operation with valid and invalid data (`--mode all`) on the served document without the
# `timeout` a start or restart may ask to wait (an invalid one, above a cap, is a valid request
# to wait an hour); then those three operations with valid data only and `timeout` capped at one
# second, so generated waits keep the run short. Everything else is the served document.
# Prints "N passed, N failed" (one per API operation and run) last; exits non-zero if anything
# failed. OUTRIGGER_FUZZ_EXAMPLES sets the examples per operation (default 25).
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BIN=${1:-${OUTRIGGER_BIN:-$ROOT/target/release/outrigger}}
SCHEMATHESIS=schemathesis==4.32.5
EXAMPLES=${OUTRIGGER_FUZZ_EXAMPLES:-25}

fail() {
    echo "http_fuzz: $*" >&2
    echo "0 passed, 1 failed"
    exit 1
}

[ -x "$BIN" ] || fail "no outrigger binary at $BIN"
venv="$HERE/.venv-schemathesis"
if [ ! -x "$venv/bin/schemathesis" ]; then
    python3 -m venv "$venv" || fail "cannot create $venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check "$SCHEMATHESIS" || fail "cannot install $SCHEMATHESIS"

work=$(mktemp -d)
pid=
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; fi
    rm -rf "$work"
}
trap cleanup EXIT

"$BIN" --port 0 --http-port 0 --host 127.0.0.1 --http-host 127.0.0.1 \
    --database-url "sqlite://$work/fuzz.db" >"$work/sidecar.log" 2>&1 &
pid=$!
# The gRPC line is logged once both listeners are up.
for _ in $(seq 1 300); do
    grep -q "listening addr=" "$work/sidecar.log" && break
    kill -0 "$pid" 2>/dev/null || { cat "$work/sidecar.log" >&2; fail "the sidecar exited"; }
    sleep 0.1
done
http=$(grep -o 'listening http=[^ ]*' "$work/sidecar.log" | head -1 | cut -d= -f2)
[ -n "$http" ] || { cat "$work/sidecar.log" >&2; fail "the sidecar did not report its HTTP address"; }
base="http://$http"

"$venv/bin/python" - "$base/openapi.json" "$work" <<'EOF' || fail "cannot fetch the OpenAPI document"
import copy, json, sys, urllib.request
doc = json.load(urllib.request.urlopen(sys.argv[1], timeout=10))
wait = {"$ref": "#/components/parameters/WaitTimeout"}
waits = copy.deepcopy(doc)
waits["components"]["parameters"]["WaitTimeout"]["schema"]["maximum"] = 1
for item in doc["paths"].values():
    for op in item.values():
        if isinstance(op, dict) and "parameters" in op:
            op["parameters"] = [p for p in op["parameters"] if p != wait]
json.dump(doc, open(sys.argv[2] + "/all.json", "w"))
json.dump(waits, open(sys.argv[2] + "/waits.json", "w"))
EOF

# One schemathesis run: $1 names it, $2 is the document, the rest are extra arguments.
rc=0
fuzz() {
    local name=$1 doc=$2
    shift 2
    echo "== schemathesis: $name"
    "$venv/bin/schemathesis" run "$doc" --url "$base" \
        --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
        --max-examples "$EXAMPLES" --workers 1 --request-timeout 20 --seed 14 --no-color \
        --suppress-health-check all \
        --report junit --report-junit-path "$work/junit-$name.xml" "$@" || rc=1
}
# Its cache goes to the working directory: the scratch one, not the repository.
cd "$work" || fail "cannot enter $work"
fuzz all "$work/all.json" --mode all
fuzz waits "$work/waits.json" --mode positive \
    --include-operation-id-regex '^(startOrchestration|startOrchestrationWithId|restartInstance)$'

if ! kill -0 "$pid" 2>/dev/null; then
    cat "$work/sidecar.log" >&2
    fail "the sidecar crashed during the run"
fi
if grep -q "panicked" "$work/sidecar.log"; then
    grep -B2 -A5 "panicked" "$work/sidecar.log" >&2
    fail "the sidecar panicked during the run"
fi

counts=$("$venv/bin/python" - "$work"/junit-all.xml "$work"/junit-waits.xml <<'EOF'
import sys
import xml.etree.ElementTree as ET
passed = failed = 0
for path in sys.argv[1:]:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        failed += 1
        continue
    for case in root.iter("testcase"):
        if any(child.tag in ("failure", "error") for child in case):
            failed += 1
        else:
            passed += 1
print(passed, failed)
EOF
)
read -r p f <<<"$counts"
if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
echo "$p passed, $f failed"
[ "$f" -eq 0 ] && [ "$p" -gt 0 ]
