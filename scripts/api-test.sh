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
. scripts/dev-system.sh apitest 18080 18081 18082 19090

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
