# Sourced by the scripts that test a running system (api-test.sh, browser-test.sh): starts
# `authbridge-dev` on its own database, queue prefix and ports, waits until it is ready, and
# removes all of it when the calling script exits.
# Usage: . scripts/dev-system.sh <name> <gateway port> <proxy port> <refresher port> <mock port>
#   then: $GW, $PX (the URLs) and AUTHBRIDGE_DEV_API_KEY are set.
name=$1
run_id="${name}_$$_$(date +%s)"
export AUTHBRIDGE_DEV_DATABASE="authbridge_$run_id" AUTHBRIDGE_DEV_QUEUE_PREFIX="authbridge-$run_id"
AUTHBRIDGE_ENCRYPTION_KEY=$(head -c 32 /dev/urandom | base64)
export AUTHBRIDGE_ENCRYPTION_KEY
export AUTHBRIDGE_DEV_GATEWAY_PORT=$2 AUTHBRIDGE_DEV_PROXY_PORT=$3
export AUTHBRIDGE_DEV_REFRESHER_PORT=$4 AUTHBRIDGE_DEV_MOCK_PORT=$5
export AUTHBRIDGE_DEV_API_KEY="$name-key-0123456789" RUST_LOG=warn
# Nothing kept between runs: each run has a database of its own, dropped at the end.
export AUTHBRIDGE_DEV_MOCK_STATE=
GW=http://127.0.0.1:$2 PX=http://127.0.0.1:$3
dev_log=$(mktemp)
"${CARGO_TARGET_DIR:-target}/debug/authbridge-dev" >"$dev_log" 2>&1 &
dev_pid=$!
dev_cleanup() {
  kill -INT "$dev_pid" 2>/dev/null
  wait "$dev_pid" 2>/dev/null || true
  rm -f "$dev_log"
  psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS \"$AUTHBRIDGE_DEV_DATABASE\" WITH (FORCE)" >/dev/null 2>&1 || true
  if command -v rabbitmqctl >/dev/null 2>&1; then
    rabbitmqctl -q list_queues name 2>/dev/null | grep "^$AUTHBRIDGE_DEV_QUEUE_PREFIX\." | while read -r q; do
      rabbitmqctl -q delete_queue "$q" </dev/null >/dev/null 2>&1 || true
    done
  fi
}
trap dev_cleanup EXIT
for _ in $(seq 60); do
  curl -fs "$GW/readyz" >/dev/null 2>&1 && curl -fs "$PX/readyz" >/dev/null 2>&1 && break
  sleep 1
done
curl -fs "$GW/readyz" >/dev/null || { cat "$dev_log"; echo "the system did not start" >&2; exit 1; }
