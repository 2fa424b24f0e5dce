#!/usr/bin/env bash
# Runs the deployment suite (deploy/tests): the container image built and run with podman, the
# manifests' shape, TLS/mTLS, API keys with the Python SDK, and the SIGTERM drain.
#
#   deploy/tests/run.sh                 (PYTEST_ADDOPTS="-k tls" to pick tests)
#
# Uses OUTRIGGER_BIN, else builds target/release/outrigger. Installs what it needs when missing
# (Debian, as root): podman, runc and openssl, and the SDK virtualenv of sdk-tests/python plus
# PyYAML. Prints "N passed, N failed" last; exits non-zero if anything failed or nothing ran.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

missing=()
command -v podman >/dev/null || missing+=(podman)
[ -x /usr/sbin/runc ] || missing+=(runc)
command -v openssl >/dev/null || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
  echo "deploy tests: installing ${missing[*]}" >&2
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}") >&2
  else
    echo "deploy tests: cannot install ${missing[*]} (needs root and apt-get)" >&2
  fi
fi

if [ -z "${OUTRIGGER_BIN:-}" ]; then
  (cd "$ROOT" && cargo build --locked --release --bin outrigger) || { echo "0 passed, 1 failed"; exit 1; }
  export OUTRIGGER_BIN="$ROOT/target/release/outrigger"
fi

# The image's own binary (the `image` profile, optimised across crates) takes the longest to
# build; build it here, outside the tests' time limits, so image.sh finds it ready.
(cd "$ROOT" && cargo build --locked --profile image --bin outrigger) || { echo "0 passed, 1 failed"; exit 1; }

venv="$ROOT/sdk-tests/python/.venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" || { echo "0 passed, 1 failed"; exit 1; }
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check \
  -r "$ROOT/sdk-tests/python/requirements.txt" -r "$HERE/requirements.txt" || { echo "0 passed, 1 failed"; exit 1; }

results="$HERE/.results"
mkdir -p "$results"
xml="$results/junit.xml"
rm -f "$xml"
(cd "$HERE" && "$venv/bin/python" -m pytest -q -p no:cacheprovider --junitxml="$xml")
rc=$?

read -r passed failed skipped < <("$venv/bin/python" - "$xml" <<'PY'
import sys
import xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError):
    print("0 0 0"); raise SystemExit
p = f = s = 0
for case in root.iter("testcase"):
    tags = {c.tag for c in case}
    if tags & {"failure", "error"}: f += 1
    elif "skipped" in tags: s += 1
    else: p += 1
print(p, f, s)
PY
)
# Nothing here may skip on a machine that can run podman; a skip counts as a failure.
failed=$((failed + skipped))
if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
