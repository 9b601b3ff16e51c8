#!/usr/bin/env bash
# Property-based API testing: runs schemathesis against the gateway's and the proxy's OpenAPI
# documents (docs/openapi/) on a running system, and fails on any server error (5xx) or
# response that does not match the documents' status codes.
# Usage: scripts/api-test.sh [examples per operation, default 100]
set -euo pipefail
cd "$(dirname "$0")/.."
examples=${1:-100}
bash scripts/services.sh
command -v schemathesis >/dev/null 2>&1 || pip install --quiet "schemathesis==4.32.5"
cargo build --locked -p devstack

# A fresh database, queue prefix and key for every run, removed afterwards.
run_id="apitest_$$_$(date +%s)"
export AUTHBRIDGE_DEV_DATABASE="authbridge_$run_id" AUTHBRIDGE_DEV_QUEUE_PREFIX="authbridge-$run_id"
AUTHBRIDGE_ENCRYPTION_KEY=$(head -c 32 /dev/urandom | base64)
export AUTHBRIDGE_ENCRYPTION_KEY
export AUTHBRIDGE_DEV_GATEWAY_PORT=18080 AUTHBRIDGE_DEV_PROXY_PORT=18081
export AUTHBRIDGE_DEV_REFRESHER_PORT=18082 AUTHBRIDGE_DEV_MOCK_PORT=19090
export AUTHBRIDGE_DEV_API_KEY=apitest-key-0123456789 RUST_LOG=warn
GW=http://127.0.0.1:18080 PX=http://127.0.0.1:18081
log=$(mktemp)
"${CARGO_TARGET_DIR:-target}/debug/authbridge-dev" >"$log" 2>&1 &
pid=$!
cleanup() {
  kill -INT "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null || true
  rm -f "$log"
  psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS \"$AUTHBRIDGE_DEV_DATABASE\" WITH (FORCE)" >/dev/null 2>&1 || true
  if command -v rabbitmqctl >/dev/null 2>&1; then
    rabbitmqctl -q list_queues name 2>/dev/null | grep "^$AUTHBRIDGE_DEV_QUEUE_PREFIX\." | while read -r q; do
      rabbitmqctl -q delete_queue "$q" </dev/null >/dev/null 2>&1 || true
    done
  fi
}
trap cleanup EXIT
for _ in $(seq 60); do
  curl -fs "$GW/readyz" >/dev/null 2>&1 && curl -fs "$PX/readyz" >/dev/null 2>&1 && break
  sleep 1
done
curl -fs "$GW/readyz" >/dev/null || { cat "$log"; echo "the system did not start" >&2; exit 1; }

# Some data for the tester to find: one connection made through the real flow.
KEY="Authorization: Bearer $AUTHBRIDGE_DEV_API_KEY"
url=$(curl -fs -X POST "$GW/v1/connect/sessions" -H "$KEY" -H 'Content-Type: application/json' \
  -d '{"provider":"mock","connection_id":"alice","return_url":"https://app.example/done"}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["connect_url"])')
jar=$(mktemp)
for _ in 1 2 3; do url=$(curl -s -b "$jar" -c "$jar" -o /dev/null -w '%{redirect_url}' "$url"); done
rm -f "$jar"
case "$url" in *status=connected*) ;; *) echo "seeding a connection failed: $url" >&2; exit 1 ;; esac

status=0
for spec in gateway:$GW proxy:$PX; do
  name=${spec%%:*} base=${spec#*:}
  echo "== schemathesis: $name ($examples examples per operation)"
  schemathesis run "docs/openapi/$name.yaml" --url "$base" -H "$KEY" \
    --checks not_a_server_error,status_code_conformance --max-examples "$examples" \
    --request-timeout 10 || status=1
done
exit $status
