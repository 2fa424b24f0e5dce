#!/usr/bin/env bash
# Fuzzes the HTTP API with schemathesis against a running sidecar: generated requests for every
# operation of the OpenAPI document the sidecar serves, each answer checked for no 5xx and for
# matching the document (status code, content type, headers, body schema).
#
#   tests/http_fuzz.sh [path/to/outrigger]     (default: target/release/outrigger)
#
# Installs schemathesis (pinned) into its own virtualenv, tests/.venv-schemathesis. The waits a
# start may ask for (`timeout`) are capped at one second in the copy of the document given to
# schemathesis, so generated waits keep the run short; everything else is the served document.
# Prints "N passed, N failed" (one per API operation) last; exits non-zero if anything failed.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BIN=${1:-${OUTRIGGER_BIN:-$ROOT/target/release/outrigger}}
SCHEMATHESIS=schemathesis==4.32.5
EXAMPLES=${OUTRIGGER_FUZZ_EXAMPLES:-40}

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

"$venv/bin/python" - "$base/openapi.json" "$work/openapi.json" <<'EOF' || fail "cannot fetch the OpenAPI document"
import json, sys, urllib.request
doc = json.load(urllib.request.urlopen(sys.argv[1], timeout=10))
doc["components"]["parameters"]["WaitTimeout"]["schema"]["maximum"] = 1
json.dump(doc, open(sys.argv[2], "w"))
EOF

"$venv/bin/schemathesis" run "$work/openapi.json" --url "$base" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
    --max-examples "$EXAMPLES" --workers 2 --request-timeout 20 --seed 14 --no-color \
    --suppress-health-check all \
    --report junit --report-junit-path "$work/junit.xml"
rc=$?

if ! kill -0 "$pid" 2>/dev/null; then
    cat "$work/sidecar.log" >&2
    fail "the sidecar crashed during the run"
fi
if grep -q "panicked" "$work/sidecar.log"; then
    grep -B2 -A5 "panicked" "$work/sidecar.log" >&2
    fail "the sidecar panicked during the run"
fi

counts=$("$venv/bin/python" - "$work/junit.xml" <<'EOF'
import sys
import xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError):
    print("0 1")
    raise SystemExit
passed = failed = 0
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
