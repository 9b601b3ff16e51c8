#!/usr/bin/env bash
# Benchmarks api-proxy, in one run and on one machine, against:
#   1. the upstream called directly (the physical limit),
#   2. nginx injecting a fixed Authorization header (the hand-tuned reverse proxy),
#   3. Express + axios adding the bearer token (what the providers' integration guides lead to),
#   4. api-proxy with a real connection in PostgreSQL and its token cache warm.
# Each at a fixed concurrency, then at an offered rate of half api-proxy's peak. Writes the
# table to docs/benchmarks.md. Usage: bench/run.sh   (BENCH_DURATION=15 BENCH_CONCURRENCY=64)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${BENCH_DURATION:-15}
CONC=${BENCH_CONCURRENCY:-64}
UP=18090 NGX=18091 EXP=18092 PRX=18093

bash scripts/services.sh
command -v nginx >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq nginx-light; }
command -v node >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq nodejs npm; }
command -v oha >/dev/null 2>&1 || cargo install --locked oha
(cd bench/express && npm ci --no-audit --no-fund --silent)
cargo build --release --locked -p devstack -p api-proxy

work=$(mktemp -d)
run_id="bench_$$"
db="authbridge_$run_id"
KEY=$(head -c 32 /dev/urandom | base64)
API_KEY="bench-api-key-0123456789"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
  rabbitmqctl -q list_queues name 2>/dev/null | grep "^authbridge-$run_id" | while read -r q; do
    rabbitmqctl -q delete_queue "$q" </dev/null >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

wait_http() { for _ in $(seq 100); do curl -s -o /dev/null "$1" && return 0; sleep 0.2; done; echo "$1 did not come up" >&2; return 1; }

# 1 and 2: nginx as the upstream, and nginx as the reverse proxy.
for conf in upstream proxy; do
  sed -e "s#__DIR__#$work#g" -e "s#__UPSTREAM_PORT__#$UP#g" -e "s#__NGINX_PORT__#$NGX#g" \
    "bench/nginx-$conf.conf" > "$work/nginx-$conf.conf"
  nginx -c "$work/nginx-$conf.conf" -p "$work" -e "$work/nginx-$conf-error.log" &
  pids+=($!)
done
wait_http "http://127.0.0.1:$UP/"
wait_http "http://127.0.0.1:$NGX/"

# 3: Express + axios.
UPSTREAM="http://127.0.0.1:$UP" TOKEN=fixed-benchmark-token PORT=$EXP node bench/express/server.js &
pids+=($!)
express_pid=$!
wait_http "http://127.0.0.1:$EXP/"

# 4: a real connection, made through the whole flow against the mock provider, whose API
# base points at the upstream; then the api-proxy binary on its own, on that database.
AUTHBRIDGE_ENCRYPTION_KEY=$KEY AUTHBRIDGE_DEV_DATABASE=$db AUTHBRIDGE_DEV_QUEUE_PREFIX="authbridge-$run_id" \
AUTHBRIDGE_DEV_API_KEY=$API_KEY AUTHBRIDGE_DEV_TOKEN_TTL_SECONDS=86400 \
AUTHBRIDGE_DEV_GATEWAY_PORT=18180 AUTHBRIDGE_DEV_PROXY_PORT=18181 AUTHBRIDGE_DEV_REFRESHER_PORT=18182 \
AUTHBRIDGE_DEV_MOCK_PORT=18190 AUTHBRIDGE_DEV_MOCK_API_BASE="http://127.0.0.1:$UP/" RUST_LOG=warn \
  target/release/authbridge-dev > "$work/dev.log" 2>&1 &
dev_pid=$!
pids+=($dev_pid)
wait_http "http://127.0.0.1:18180/readyz"
url=$(curl -fs -X POST http://127.0.0.1:18180/v1/connect/sessions -H "Authorization: Bearer $API_KEY" \
  -H 'Content-Type: application/json' \
  -d '{"provider":"mock","connection_id":"bench-user","return_url":"https://app.example/done"}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["connect_url"])')
for _ in 1 2 3; do url=$(curl -s -o /dev/null -w '%{redirect_url}' "$url"); done
case "$url" in *status=connected*) ;; *) echo "could not create the benchmark connection: $url" >&2; exit 1 ;; esac
kill -INT "$dev_pid"; wait "$dev_pid" 2>/dev/null || true

cat > "$work/providers.toml" <<TOML
[providers.mock]
authorize_url = "http://127.0.0.1:18190/oauth/authorize"
token_url = "http://127.0.0.1:18190/oauth/token"
api_base_url = "http://127.0.0.1:$UP/"
client_id = "authbridge-client"
client_secret = "s3cret:with&odd=chars"
TOML
AUTHBRIDGE_DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db" AUTHBRIDGE_ENCRYPTION_KEY=$KEY \
AUTHBRIDGE_API_KEYS=$API_KEY AUTHBRIDGE_PROVIDERS_FILE="$work/providers.toml" \
AUTHBRIDGE_QUEUE_PREFIX="authbridge-$run_id" AUTHBRIDGE_PROXY_BIND="127.0.0.1:$PRX" RUST_LOG=warn \
  target/release/api-proxy > "$work/api-proxy.log" 2>&1 &
proxy_pid=$!
pids+=($proxy_pid)
wait_http "http://127.0.0.1:$PRX/readyz"
curl -fs "http://127.0.0.1:$PRX/proxy/mock/bench-user/contacts/42" -H "Authorization: Bearer $API_KEY" >/dev/null

declare -A URL=(
  [direct]="http://127.0.0.1:$UP/contacts/42"
  [nginx]="http://127.0.0.1:$NGX/contacts/42"
  [express]="http://127.0.0.1:$EXP/contacts/42"
  [api-proxy]="http://127.0.0.1:$PRX/proxy/mock/bench-user/contacts/42"
)
order=(direct nginx express api-proxy)
load() { # name, extra oha args…
  local name=$1; shift
  oha --no-tui --output-format json -H "Authorization: Bearer $API_KEY" "$@" "${URL[$name]}"
}
for name in "${order[@]}"; do
  echo "== $name: ${CONC} connections, ${DURATION}s" >&2
  load "$name" -z 3s -c "$CONC" > /dev/null                     # warm-up
  load "$name" -z "${DURATION}s" -c "$CONC" > "$work/$name-peak.json"
done
# Where api-proxy's time goes at peak: a flat CPU profile (perf, sampling), kept separately
# from the measurements above so it cannot disturb them.
if command -v perf >/dev/null 2>&1; then
  echo "== api-proxy: profiling at peak" >&2
  perf record -F 499 -o "$work/perf.data" -p "$proxy_pid" -- sleep 10 >/dev/null 2>&1 &
  perf_pid=$!
  load api-proxy -z 10s -c "$CONC" > /dev/null
  wait "$perf_pid" || true
  perf report -i "$work/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null |
    grep -E '^ +[0-9]' | sed -E 's/[[:space:]]+-[[:space:]]+-[[:space:]]*$//; s/[[:space:]]+$//' | head -25 > "$work/profile.txt" || true
fi
rate=$(python3 -c "import json; d = json.load(open('$work/api-proxy-peak.json')); print(max(1, int(d['statusCodeDistribution'].get('200', 0) / d['summary']['total'] / 2)))")
for name in "${order[@]}"; do
  echo "== $name: ${rate} requests/s offered, ${DURATION}s" >&2
  load "$name" -z "${DURATION}s" -c "$CONC" -q "$rate" > "$work/$name-half.json"
done

hwm() { awk '/VmHWM/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
nginx_rss=0
for p in $(pgrep -f "nginx-proxy.conf"); do nginx_rss=$((nginx_rss + $(hwm "$p"))); done
cat > "$work/rss.json" <<JSON
{"api-proxy": $(hwm $proxy_pid), "express": $(hwm $express_pid), "nginx": $nginx_rss}
JSON
python3 bench/report.py "$work" "$CONC" "$DURATION" "$rate" > docs/benchmarks.md
cat docs/benchmarks.md
