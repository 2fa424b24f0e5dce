#!/usr/bin/env bash
# Runs the dashboard's browser tests: headless Chromium (Debian's chromium package) driven by
# playwright-core from npm, against an outrigger binary, with orchestrations run by the Python
# SDK. Installs what it needs: chromium (apt, when missing), node and npm (apt, when missing),
# playwright-core (npm, into node_modules here) and the Python SDK (the venv of
# sdk-tests/python). OUTRIGGER_BIN names the binary (default: target/release/outrigger, built
# when missing). Screenshots and logs go to results/. Ends with "N passed, N failed".
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

fail() {
    echo "dashboard tests: $*" >&2
    echo "0 passed, 1 failed"
    exit 1
}

apt_install() {
    command -v apt-get >/dev/null || return 1
    # Another install may hold the lock (a machine being set up): wait for it rather than fail.
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y "$@" >/dev/null \
        || { apt-get -o DPkg::Lock::Timeout=600 update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y "$@" >/dev/null; }
}

[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || apt_install chromium || fail "no chromium and it could not be installed"
command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm || fail "no node/npm and they could not be installed"

if [ ! -f "$HERE/node_modules/playwright-core/package.json" ]; then
    (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error) || fail "npm ci (playwright-core) failed"
fi

venv="$ROOT/sdk-tests/python/.venv"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" || fail "cannot create $venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$ROOT/sdk-tests/python/requirements.txt" \
    || fail "pip install of the Python SDK failed"

if [ -z "${OUTRIGGER_BIN:-}" ]; then
    (cd "$ROOT" && cargo build --release) || fail "cargo build --release failed"
    export OUTRIGGER_BIN="$ROOT/target/release/outrigger"
fi

cd "$HERE" && PYTHON="$venv/bin/python" node test.mjs
