#!/usr/bin/env bash
# The test command: lints, then every test of the workspace against the real PostgreSQL and
# RabbitMQ (started first if they are down). CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
# The Standard Webhooks reference library: the end-to-end tests verify every webhook they
# receive with it (scripts/verify-webhooks.py), not only with our own code.
python3 -c 'import standardwebhooks' 2>/dev/null || pip install --quiet "standardwebhooks==1.3.0"
# The deployment files (docker-compose.yml, deploy/) checked against each other and the code.
python3 scripts/check-deploy.py
# The OpenAPI documents the services serve are the ones in docs/openapi/, with operationIds.
python3 scripts/openapi.py --check
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
# The API documentation builds without a warning (broken or private links included).
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --all-targets --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
if [ "$status" -eq 0 ]; then
  # The proxy's end-to-end suite once more with hyper serving callers and calling providers
  # (AUTHBRIDGE_PROXY_HTTP_STACK=hyper): the proxy's own HTTP/1.1 code must behave as the
  # reference does.
  echo "== the proxy's suite through hyper alone"
  AUTHBRIDGE_PROXY_HTTP_STACK=hyper cargo test -p devstack --test e2e --locked -- proxy:: credentials:: machine:: 2>&1 | tee -a "$log"
  status=${PIPESTATUS[0]}
fi
if [ "$status" -eq 0 ]; then
  # The fuzz targets (scripts/fuzz.sh) still build against the code they fuzz.
  cargo check --manifest-path fuzz/Cargo.toml --bins --locked --quiet --target-dir target/fuzz-check
  status=$?
fi
if [ "$status" -eq 0 ]; then
  # Property-based API testing against the OpenAPI documents: no server error, no undocumented status.
  apilog=$(mktemp)
  bash scripts/api-test.sh 25 >"$apilog" 2>&1
  status=$?
  grep -E "^== |generated|Failures|ST[0-9]{3}" "$apilog" || true
  [ "$status" -eq 0 ] || cat "$apilog"
  rm -f "$apilog"
fi
if [ "$status" -eq 0 ]; then
  # The README's curl examples, in the order a reader meets them, against a running system.
  bash scripts/readme-examples.sh
  status=$?
fi
if [ "$status" -eq 0 ]; then
  # The hosted connect pages in Debian's Chromium: flows, keyboard, WCAG 2.1 AA (axe-core),
  # screenshots in target/browser/.
  bash scripts/browser-test.sh
  status=$?
fi
if [ "$status" -eq 0 ]; then
  # Fault injection stops and restarts the shared RabbitMQ and PostgreSQL: alone, one case at
  # a time, after everything else. Figures land in target/reliability-report.md.
  rm -f target/reliability-report.md
  cargo test -p devstack --features fault-tests --test faults --locked -- --test-threads=1 2>&1 | tee -a "$log"
  status=${PIPESTATUS[0]}
  bash scripts/services.sh
fi
set -e
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "\nworkspace: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
