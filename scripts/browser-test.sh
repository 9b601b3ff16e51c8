#!/usr/bin/env bash
# The hosted connect pages in a real browser: Debian's Chromium driven by playwright-core
# (tests/browser/run.mjs) against a running system. Installs Chromium (apt) and the test's two
# npm packages when missing; fails loudly when it cannot. Screenshots land in target/browser/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
if ! command -v chromium >/dev/null 2>&1; then
  echo "installing Debian's chromium for the browser tests" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ||
    { echo "error: chromium could not be installed; the browser tests cannot run" >&2; exit 1; }
fi
(cd tests/browser && { [ -d node_modules/playwright-core ] || npm ci --no-audit --no-fund --silent; })
cargo build --locked -p devstack

run_id="browser_$$_$(date +%s)"
export AUTHBRIDGE_DEV_DATABASE="authbridge_$run_id" AUTHBRIDGE_DEV_QUEUE_PREFIX="authbridge-$run_id"
AUTHBRIDGE_ENCRYPTION_KEY=$(head -c 32 /dev/urandom | base64)
export AUTHBRIDGE_ENCRYPTION_KEY
export AUTHBRIDGE_DEV_GATEWAY_PORT=18480 AUTHBRIDGE_DEV_PROXY_PORT=18481
export AUTHBRIDGE_DEV_REFRESHER_PORT=18482 AUTHBRIDGE_DEV_MOCK_PORT=18490
export AUTHBRIDGE_DEV_API_KEY=browser-test-key-0123456789 RUST_LOG=warn
log=$(mktemp)
"${CARGO_TARGET_DIR:-target}/debug/authbridge-dev" >"$log" 2>&1 &
pid=$!
cleanup() {
  kill -INT "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null || true
  rm -f "$log"
  psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS \"$AUTHBRIDGE_DEV_DATABASE\" WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT
for _ in $(seq 60); do curl -fs "http://127.0.0.1:18480/readyz" >/dev/null 2>&1 && break; sleep 1; done
curl -fs "http://127.0.0.1:18480/readyz" >/dev/null || { cat "$log"; echo "the system did not start" >&2; exit 1; }
mkdir -p target/browser
(cd tests/browser && GATEWAY=http://127.0.0.1:18480 API_KEY=$AUTHBRIDGE_DEV_API_KEY SHOTS="$PWD/../../target/browser" node run.mjs)
