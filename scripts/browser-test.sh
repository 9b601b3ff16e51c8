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

. scripts/dev-system.sh browser 18480 18481 18482 18490
mkdir -p target/browser
(cd tests/browser && GATEWAY=$GW MOCK=http://127.0.0.1:18490 API_KEY=$AUTHBRIDGE_DEV_API_KEY SHOTS="$PWD/../../target/browser" node run.mjs)
# Again with the pages branded (a product name, an accent colour) and the OAuth interstitial on.
(
  export AUTHBRIDGE_CONNECT_PRODUCT_NAME=Acme AUTHBRIDGE_CONNECT_ACCENT='#ffd400' AUTHBRIDGE_CONNECT_INTERSTITIAL=true
  . scripts/dev-system.sh browser_branded 18580 18581 18582 18590
  cd tests/browser && BRANDED=1 GATEWAY=$GW API_KEY=$AUTHBRIDGE_DEV_API_KEY SHOTS="$PWD/../../target/browser" node run.mjs
)
# And with connect links that expire after a second, for the expired link's page.
(
  export AUTHBRIDGE_DEV_SESSION_TTL_SECONDS=1
  . scripts/dev-system.sh browser_expiry 18780 18781 18782 18790
  cd tests/browser && EXPIRED=1 GATEWAY=$GW API_KEY=$AUTHBRIDGE_DEV_API_KEY SHOTS="$PWD/../../target/browser" node run.mjs
)
