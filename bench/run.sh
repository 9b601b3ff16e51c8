#!/usr/bin/env bash
# Benchmarks api-proxy, in one run and on one machine, against:
#   1. the upstream called directly (the physical limit),
#   2. nginx injecting a fixed Authorization header (the hand-tuned reverse proxy),
#   3. Express + axios adding the bearer token (what the providers' integration guides lead to),
#   4. api-proxy with a real connection in PostgreSQL and its token cache warm.
# Each at a fixed concurrency, then at an offered rate of half api-proxy's peak. Then the
# system: the gateway's callback throughput (complete connect flows against the mock provider),
# the refresher draining 10,000 connections that fall due at one instant, and api-proxy's
# latency with 1,000,000 connections stored against 10,000 (cache on and off); peak RSS of each
# process. Writes everything to docs/benchmarks.md.
# Each target is measured in BENCH_ROUNDS rounds, the targets taking turns within a round, and
# reported by the median round (every round's figures are listed too): on a 2-core machine the
# load generator, the proxy and the upstream compete for the cores, and a single run's p99 swings
# with how the scheduler happened to treat the load generator during it.
# Usage: bench/run.sh   (BENCH_DURATION=10 BENCH_ROUNDS=3 BENCH_CONCURRENCY=64
#                        BENCH_CONNECTIONS=10000 BENCH_BIG=1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${BENCH_DURATION:-10}
ROUNDS=${BENCH_ROUNDS:-3}
CONC=${BENCH_CONCURRENCY:-64}
FLOWS=${BENCH_CONNECTIONS:-10000}
BIG=${BENCH_BIG:-1000000}
UP=18090 NGX=18091 EXP=18092 PRX=18093 PRX_INFO=18096 GW=18280 RF=18282 MOCK=18290 PRX_SMALL=18294 PRX_BIG=18295

bash scripts/services.sh
command -v nginx >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq nginx-light; }
command -v node >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq nodejs npm; }
command -v oha >/dev/null 2>&1 || cargo install --locked oha
(cd bench/express && npm ci --no-audit --no-fund --silent)
cargo build --release --locked -p devstack -p api-proxy -p auth-gateway -p token-refresher -p mock-provider

work=$(mktemp -d)
run_id="bench_$$"
db="authbridge_$run_id"
dbs=("$db" "${db}_sys" "${db}_small" "${db}_big")
KEY=$(head -c 32 /dev/urandom | base64)
API_KEY="bench-api-key-0123456789"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for d in "${dbs[@]}"; do
    psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS \"$d\" WITH (FORCE)" >/dev/null 2>&1 || true
  done
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
jar="$work/cookies"
for _ in 1 2 3; do url=$(curl -s -b "$jar" -c "$jar" -o /dev/null -w '%{redirect_url}' "$url"); done
case "$url" in *status=connected*) ;; *) echo "could not create the benchmark connection: $url" >&2; exit 1 ;; esac
# Internal services call the proxy with a key issued through the management API (scoped to
# `proxy` and the provider), not with a bootstrap key: the proxy checks it as it would theirs.
PROXY_KEY=$(curl -fs -X POST http://127.0.0.1:18180/v1/api-keys -H "Authorization: Bearer $API_KEY" \
  -H 'Content-Type: application/json' -d '{"name":"bench","scopes":["proxy"],"providers":["mock"]}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
kill -INT "$dev_pid"; wait "$dev_pid" 2>/dev/null || true

cat > "$work/providers.toml" <<TOML
[providers.mock]
authorize_url = "http://127.0.0.1:18190/oauth/authorize"
token_url = "http://127.0.0.1:18190/oauth/token"
api_base_url = "http://127.0.0.1:$UP/"
client_id = "authbridge-client"
client_secret = "s3cret:with&odd=chars"
TOML
# An api-proxy process on port $1 at log level $2, its log in $work/$3 (as a container's
# output would be collected); sets started_pid.
start_proxy() {
  AUTHBRIDGE_DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db" AUTHBRIDGE_ENCRYPTION_KEY=$KEY \
  AUTHBRIDGE_API_KEYS=$API_KEY AUTHBRIDGE_PROVIDERS_FILE="$work/providers.toml" \
  AUTHBRIDGE_QUEUE_PREFIX="authbridge-$run_id" AUTHBRIDGE_PROXY_BIND="127.0.0.1:$1" RUST_LOG=$2 \
    target/release/api-proxy > "$work/$3" 2>&1 &
  started_pid=$!
  pids+=($started_pid)
  wait_http "http://127.0.0.1:$1/readyz"
}
start_proxy "$PRX" warn api-proxy.log
proxy_pid=$started_pid
curl -fs "http://127.0.0.1:$PRX/proxy/mock/bench-user/contacts/42" -H "Authorization: Bearer $PROXY_KEY" >/dev/null
# The same proxy at the README's default log level (an access log line per call).
start_proxy "$PRX_INFO" info api-proxy-info.log
proxy_info_pid=$started_pid

declare -A URL=(
  [direct]="http://127.0.0.1:$UP/contacts/42"
  [nginx]="http://127.0.0.1:$NGX/contacts/42"
  [express]="http://127.0.0.1:$EXP/contacts/42"
  [api-proxy]="http://127.0.0.1:$PRX/proxy/mock/bench-user/contacts/42"
  [api-proxy-info]="http://127.0.0.1:$PRX_INFO/proxy/mock/bench-user/contacts/42"
)
order=(direct nginx express api-proxy api-proxy-info)
load() { # name, extra oha args…
  local name=$1 key=$API_KEY; shift
  case $name in api-proxy*) key=$PROXY_KEY ;; esac
  oha --no-tui --output-format json -H "Authorization: Bearer $key" "$@" "${URL[$name]}"
}
# CPU time (user + system, in clock ticks) of the processes that serve a target: on a shared
# 2-core machine, CPU per request is the fairest single number to compare.
serving() {
  local m
  case $1 in
    direct) m=$(pgrep -f nginx-upstream.conf); echo "$m" $(pgrep -P "$m") ;;
    nginx) m=$(pgrep -f nginx-proxy.conf); echo "$m" $(pgrep -P "$m") ;;
    express) echo "$express_pid" ;;
    api-proxy) echo "$proxy_pid" ;;
    api-proxy-info) echo "$proxy_info_pid" ;;
  esac
}
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{ print $14 + $15 }' "/proc/$p/stat"))); done; echo $t; }
for name in "${order[@]}"; do load "$name" -z 3s -c "$CONC" > /dev/null; done   # warm-up
for r in $(seq "$ROUNDS"); do
  for name in "${order[@]}"; do
    echo "== round $r: $name, ${CONC} connections, ${DURATION}s" >&2
    before=$(ticks $(serving "$name"))
    load "$name" -z "${DURATION}s" -c "$CONC" > "$work/$name-peak-$r.json"
    echo "$before $(ticks $(serving "$name")) $(getconf CLK_TCK)" > "$work/$name-cpu-$r.txt"
  done
done
# Where api-proxy's time goes at peak: a sampled CPU profile with call stacks (perf, DWARF
# unwinding), as a flat list and a flame graph, kept apart from the measurements above so it
# cannot disturb them.
if command -v perf >/dev/null 2>&1; then
  command -v inferno-flamegraph >/dev/null 2>&1 || cargo install --locked inferno
  echo "== api-proxy: profiling at peak" >&2
  perf record -F 199 --call-graph dwarf,16384 -o "$work/perf.data" -p "$proxy_pid" -- sleep 8 >/dev/null 2>&1 &
  perf_pid=$!
  load api-proxy -z 9s -c "$CONC" > /dev/null
  wait "$perf_pid" || true
  perf report -i "$work/perf.data" -g none --no-children --sort dso,symbol --stdio 2>/dev/null |
    grep -E '^ +[0-9]' | sed -E 's/[[:space:]]+-[[:space:]]+-[[:space:]]*$//; s/[[:space:]]+$//' | head -25 > "$work/profile.txt" || true
  perf script -i "$work/perf.data" 2>/dev/null | inferno-collapse-perf > "$work/collapsed.txt" || true
  inferno-flamegraph --title "api-proxy at peak load (bench/run.sh)" < "$work/collapsed.txt" \
    > docs/api-proxy-flamegraph.svg 2>/dev/null || true
fi
rate=$(python3 -c "
import glob, json, statistics
r = [json.load(open(f)) for f in glob.glob('$work/api-proxy-peak-*.json')]
print(max(1, int(statistics.median(d['statusCodeDistribution'].get('200', 0) / d['summary']['total'] for d in r) / 2)))")
for r in $(seq "$ROUNDS"); do
  for name in "${order[@]}"; do
    echo "== round $r: $name, ${rate} requests/s offered, ${DURATION}s" >&2
    load "$name" -z "${DURATION}s" -c "$CONC" -q "$rate" > "$work/$name-half-$r.json"
  done
done

hwm() { awk '/VmHWM/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
proxy_rss=$(hwm $proxy_pid)
express_rss=$(hwm $express_pid)
nginx_rss=0
for p in $(pgrep -f "nginx-proxy.conf"); do nginx_rss=$((nginx_rss + $(hwm "$p"))); done
kill "$proxy_pid" "$proxy_info_pid" "$express_pid" 2>/dev/null || true

# 5. The system, each service its own process, on a fresh database.
sysdb="${db}_sys"
psql -q -h 127.0.0.1 -U postgres -d postgres -c "CREATE DATABASE \"$sysdb\"" >/dev/null
loadgen=target/release/authbridge-loadgen
common_env() { # database → the environment every service needs
  echo AUTHBRIDGE_DATABASE_URL="postgres://postgres@127.0.0.1:5432/$1" AUTHBRIDGE_ENCRYPTION_KEY="$KEY" \
    AUTHBRIDGE_API_KEYS="$API_KEY" AUTHBRIDGE_PROVIDERS_FILE="$work/providers-sys.toml" \
    AUTHBRIDGE_QUEUE_PREFIX="authbridge-$run_id-$1" RUST_LOG=warn
}
cat > "$work/providers-sys.toml" <<TOML
[providers.mock]
authorize_url = "http://127.0.0.1:$MOCK/oauth/authorize"
token_url = "http://127.0.0.1:$MOCK/oauth/token"
revocation_url = "http://127.0.0.1:$MOCK/oauth/revoke"
api_base_url = "http://127.0.0.1:$UP/"
client_id = "authbridge-client"
client_secret = "bench-client-secret"
TOML
MOCK_BIND="127.0.0.1:$MOCK" MOCK_CLIENT_ID=authbridge-client MOCK_CLIENT_SECRET=bench-client-secret \
MOCK_TOKEN_TTL_SECONDS=86400 RUST_LOG=warn target/release/mock-provider > "$work/mock.log" 2>&1 &
mock_pid=$!; pids+=($mock_pid)
env $(common_env "$sysdb") AUTHBRIDGE_GATEWAY_BIND="127.0.0.1:$GW" AUTHBRIDGE_PUBLIC_URL="http://127.0.0.1:$GW" \
  target/release/auth-gateway > "$work/gateway.log" 2>&1 &
gw_pid=$!; pids+=($gw_pid)
wait_http "http://127.0.0.1:$GW/readyz"
env $(common_env "$sysdb") AUTHBRIDGE_REFRESHER_BIND="127.0.0.1:$RF" target/release/token-refresher > "$work/refresher.log" 2>&1 &
rf_pid=$!; pids+=($rf_pid)
wait_http "http://127.0.0.1:$RF/readyz"

echo "== gateway: $FLOWS connect flows, $CONC at a time" >&2
$loadgen connect "http://127.0.0.1:$GW" "$API_KEY" mock c "$FLOWS" "$CONC" > "$work/flows.json"
echo "== refresher: the $FLOWS connections fall due at one instant" >&2
export AUTHBRIDGE_DATABASE_URL="postgres://postgres@127.0.0.1:5432/$sysdb" AUTHBRIDGE_ENCRYPTION_KEY="$KEY"
read -r due_at scheduled_at < <($loadgen due mock c 20 |
  python3 -c 'import json,sys; d = json.load(sys.stdin); print(d["due_at"], d["scheduled_at"])')
$loadgen drain mock c "$due_at" "$scheduled_at" 600 > "$work/drain.json"
curl -fs "http://127.0.0.1:$RF/metrics" > "$work/refresher-metrics.txt" || true
gw_rss=$(hwm $gw_pid) rf_rss=$(hwm $rf_pid) mock_rss=$(hwm $mock_pid)

# 6. api-proxy over a table of 10,000 connections and one of $BIG, calling the same 10,000 ids
#    at random: with the token cache (default TTL) and without it (every call reads Postgres).
for size in small big; do
  n=10000; [ "$size" = big ] && n=$BIG
  d="${db}_$size"
  psql -q -h 127.0.0.1 -U postgres -d postgres -c "CREATE DATABASE \"$d\"" >/dev/null
  echo "== seeding $n connections into $d" >&2
  AUTHBRIDGE_DATABASE_URL="postgres://postgres@127.0.0.1:5432/$d" $loadgen seed mock m "$n" 86400 > "$work/seed-$size.json"
  psql -q -h 127.0.0.1 -U postgres -d "$d" -c "VACUUM ANALYZE connections" >/dev/null
done
for cache in 30 0; do
  for size in small big; do
    port=$PRX_SMALL; [ "$size" = big ] && port=$PRX_BIG
    env $(common_env "${db}_$size") AUTHBRIDGE_PROXY_BIND="127.0.0.1:$port" AUTHBRIDGE_PROXY_TOKEN_CACHE_SECONDS=$cache \
      target/release/api-proxy > "$work/proxy-$size.log" 2>&1 &
    p=$!
    wait_http "http://127.0.0.1:$port/readyz"
    rurl="http://127.0.0.1:$port/proxy/mock/m000[0-9]{4}/contacts/42"
    echo "== api-proxy, $size table, token cache ${cache}s" >&2
    oha --no-tui --output-format json -H "Authorization: Bearer $API_KEY" --rand-regex-url -z 3s -c "$CONC" "$rurl" > /dev/null
    oha --no-tui --output-format json -H "Authorization: Bearer $API_KEY" --rand-regex-url -z "${DURATION}s" -c "$CONC" "$rurl" \
      > "$work/table-$size-cache$cache.json"
    echo "$(hwm $p)" > "$work/table-$size-cache$cache.rss"
    kill -INT "$p"; wait "$p" 2>/dev/null || true
  done
done

cat > "$work/rss.json" <<JSON
{"api-proxy (at peak, one connection)": $proxy_rss, "Express + axios": $express_rss,
 "nginx reverse proxy (all processes)": $nginx_rss,
 "auth-gateway": $gw_rss, "token-refresher": $rf_rss, "mock-provider": $mock_rss,
 "api-proxy (large table, cache on)": $(cat "$work/table-big-cache30.rss"),
 "api-proxy (large table, cache off)": $(cat "$work/table-big-cache0.rss")}
JSON
# The report is generated (its hand-written reading comes from bench/NOTES.md); the section
# bench/credentials.sh writes at its end is kept as it is.
others=$(sed -n '/^## Credential providers/,$p' docs/benchmarks.md 2>/dev/null || true)
python3 bench/report.py "$work" "$CONC" "$DURATION" "$rate" "$FLOWS" "$BIG" > docs/benchmarks.md
if [ -n "$others" ]; then printf '\n%s\n' "$others" >> docs/benchmarks.md; fi
# The raw results stay for a look or a re-render (python3 bench/report.py target/bench-last …).
rm -rf target/bench-last && mkdir -p target/bench-last && cp "$work"/*.json "$work"/*.txt "$work"/*.rss target/bench-last/ 2>/dev/null || true
cat docs/benchmarks.md
