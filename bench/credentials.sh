#!/usr/bin/env bash
# Benchmarks the credential providers, in one run on one machine:
#   1. Kartra's limit (20 calls per second per App) kept by two api-proxy replicas together:
#      both offered three times the limit, open loop, for BENCH_RATE_SECONDS (30) against the
#      mock provider's Kartra stand-in, which answers 429 past 20 calls in any second. Counts
#      what reached the stand-in, how many it refused, and what the callers got.
#   2. api-proxy's CPU per call with Kartra's form-body injection (app_id, api_key and
#      api_password merged into the caller's form) against bearer injection, the same POST with
#      the same form to the same fast upstream (nginx), BENCH_ROUNDS rounds of BENCH_DURATION s
#      at BENCH_CONCURRENCY connections, the two taking turns within each round.
# Writes the section "Credential providers" of docs/benchmarks.md (the rest is bench/run.sh's).
# Usage: bench/credentials.sh   (BENCH_RATE_SECONDS=30 BENCH_DURATION=10 BENCH_ROUNDS=3 BENCH_CONCURRENCY=64)
set -euo pipefail
cd "$(dirname "$0")/.."
RATE_SECONDS=${BENCH_RATE_SECONDS:-30}
DURATION=${BENCH_DURATION:-10}
ROUNDS=${BENCH_ROUNDS:-3}
CONC=${BENCH_CONCURRENCY:-64}
MOCK=18390 GW=18380 PX1=18381 PX2=18383 UP=18391 PXB=18385 GWB=18386

bash scripts/services.sh
command -v nginx >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq nginx-light; }
command -v oha >/dev/null 2>&1 || cargo install --locked oha
cargo build --release --locked -p devstack -p api-proxy -p auth-gateway -p mock-provider
loadgen=target/release/authbridge-loadgen

work=$(mktemp -d)
run_id="benchcred_$$"
dbs=("authbridge_${run_id}_rate" "authbridge_${run_id}_cpu")
KEY=$(head -c 32 /dev/urandom | base64)
API_KEY="bench-api-key-0123456789"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for d in "${dbs[@]}"; do
    psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS \"$d\" WITH (FORCE)" >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
wait_http() { for _ in $(seq 100); do curl -s -o /dev/null "$1" && return 0; sleep 0.2; done; echo "$1 did not come up" >&2; return 1; }
for d in "${dbs[@]}"; do psql -q -h 127.0.0.1 -U postgres -d postgres -c "CREATE DATABASE \"$d\"" >/dev/null; done
service_env() { # database, providers file → the environment every service needs
  echo AUTHBRIDGE_DATABASE_URL="postgres://postgres@127.0.0.1:5432/$1" AUTHBRIDGE_ENCRYPTION_KEY="$KEY" \
    AUTHBRIDGE_API_KEYS="$API_KEY" AUTHBRIDGE_PROVIDERS_FILE="$2" AUTHBRIDGE_QUEUE_PREFIX="authbridge-$run_id-$1" \
    KARTRA_APP_ID=demo-app RUST_LOG=warn
}
connect_kartra() { # gateway port, connection id
  curl -fs -X POST "http://127.0.0.1:$1/v1/connections" -H "Authorization: Bearer $API_KEY" \
    -H 'Content-Type: application/json' \
    -d "{\"provider\":\"kartra\",\"connection_id\":\"$2\",\"credentials\":{\"api_key\":\"demo-key\",\"api_password\":\"demo-password\"}}" \
    > /dev/null
}

# 1. Two replicas, one App limit.
MOCK_BIND="127.0.0.1:$MOCK" RUST_LOG=warn target/release/mock-provider > "$work/mock.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$MOCK/mock/api-counts"
printf '[providers.kartra]\napi_base_url = "http://127.0.0.1:%s/kartra/api"\n' "$MOCK" > "$work/providers-rate.toml"
env $(service_env "${dbs[0]}" "$work/providers-rate.toml") AUTHBRIDGE_GATEWAY_BIND="127.0.0.1:$GW" \
  AUTHBRIDGE_PUBLIC_URL="http://127.0.0.1:$GW" target/release/auth-gateway > "$work/gateway.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$GW/readyz"
for c in k1 k2 k3; do connect_kartra "$GW" "$c"; done
for port in $PX1 $PX2; do
  env $(service_env "${dbs[0]}" "$work/providers-rate.toml") AUTHBRIDGE_PROXY_BIND="127.0.0.1:$port" \
    target/release/api-proxy > "$work/proxy-$port.log" 2>&1 &
  pids+=($!)
  wait_http "http://127.0.0.1:$port/readyz"
done
# Both heartbeats written, then one more interval so each replica has counted the other.
for _ in $(seq 50); do
  n=$(psql -qtA -h 127.0.0.1 -U postgres -d "${dbs[0]}" -c \
    "SELECT count(*) FROM replicas WHERE service = 'api-proxy' AND seen_at > now() - interval '7 seconds'")
  [ "$n" = 2 ] && break
  sleep 0.2
done
[ "$n" = 2 ] || { echo "the two proxies did not register" >&2; exit 1; }
sleep 3
counts() { curl -fs "http://127.0.0.1:$MOCK/mock/api-counts"; }
counts > "$work/rate-before.json"
urls=()
for i in 0 1 2 3 4 5; do
  port=$PX1; [ $((i % 2)) = 1 ] && port=$PX2
  urls+=("http://127.0.0.1:$port/proxy/kartra/k$((1 + i % 3))")
done
echo "== two proxies offered 60 calls/s (3x Kartra's 20/s per App) for ${RATE_SECONDS}s" >&2
$loadgen paced 60 "$RATE_SECONDS" "$API_KEY" 'cmd=get_lead&get_lead%5Bemail%5D=ada%40example.com' "${urls[@]}" \
  > "$work/rate.json"
counts > "$work/rate-after.json"
for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
wait 2>/dev/null || true
pids=()

# 2. CPU per call: form-body injection against bearer injection, one proxy, one upstream.
sed -e "s#__DIR__#$work#g" -e "s#__UPSTREAM_PORT__#$UP#g" bench/nginx-upstream.conf > "$work/nginx-upstream.conf"
nginx -c "$work/nginx-upstream.conf" -p "$work" -e "$work/nginx-upstream-error.log" &
pids+=($!)
wait_http "http://127.0.0.1:$UP/"
cat > "$work/providers-cpu.toml" <<TOML
[providers.mock]
authorize_url = "http://127.0.0.1:$MOCK/oauth/authorize"
token_url = "http://127.0.0.1:$MOCK/oauth/token"
api_base_url = "http://127.0.0.1:$UP/"
client_id = "bench-client"
client_secret = "bench-secret"
# Kartra's entry as built in, its API at the upstream, without its rate limit (measured above).
[providers.kartra]
api_base_url = "http://127.0.0.1:$UP/api"
rate_limit = { requests = 0 }
TOML
env $(service_env "${dbs[1]}" "$work/providers-cpu.toml") AUTHBRIDGE_GATEWAY_BIND="127.0.0.1:$GWB" \
  AUTHBRIDGE_PUBLIC_URL="http://127.0.0.1:$GWB" target/release/auth-gateway > "$work/gateway-cpu.log" 2>&1 &
gw_pid=$!
pids+=($gw_pid)
wait_http "http://127.0.0.1:$GWB/readyz"
connect_kartra "$GWB" k1   # verified against the upstream, whose answer is no credential error
kill "$gw_pid"; wait "$gw_pid" 2>/dev/null || true
AUTHBRIDGE_DATABASE_URL="postgres://postgres@127.0.0.1:5432/${dbs[1]}" AUTHBRIDGE_ENCRYPTION_KEY="$KEY" \
  $loadgen seed mock m 1 86400 > /dev/null
env $(service_env "${dbs[1]}" "$work/providers-cpu.toml") AUTHBRIDGE_PROXY_BIND="127.0.0.1:$PXB" \
  target/release/api-proxy > "$work/proxy-cpu.log" 2>&1 &
proxy_pid=$!
pids+=($proxy_pid)
wait_http "http://127.0.0.1:$PXB/readyz"
declare -A URL=(
  [bearer]="http://127.0.0.1:$PXB/proxy/mock/m0000000/api"
  [form]="http://127.0.0.1:$PXB/proxy/kartra/k1"
)
BODY='cmd=get_lead&get_lead%5Bemail%5D=ada%40example.com'
load() {
  oha --no-tui --output-format json -m POST -d "$BODY" -H "Authorization: Bearer $API_KEY" \
    -H 'Content-Type: application/x-www-form-urlencoded' "$@"
}
ticks() { awk '{ print $14 + $15 }' "/proc/$proxy_pid/stat"; }
for name in bearer form; do load -z 3s -c "$CONC" "${URL[$name]}" > /dev/null; done   # warm-up
for r in $(seq "$ROUNDS"); do
  for name in bearer form; do
    echo "== round $r: $name injection, $CONC connections, ${DURATION}s" >&2
    before=$(ticks)
    load -z "${DURATION}s" -c "$CONC" "${URL[$name]}" > "$work/cpu-$name-$r.json"
    echo "$before $(ticks) $(getconf CLK_TCK)" > "$work/cpu-$name-$r.txt"
  done
done

python3 - "$work" "$RATE_SECONDS" "$ROUNDS" "$DURATION" "$CONC" > "$work/section.md" <<'PY'
import json, statistics, sys, datetime, platform, os
work, rate_seconds, rounds, duration, conc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
j = lambda n: json.load(open(f"{work}/{n}"))
rate, before, after = j("rate.json"), j("rate-before.json"), j("rate-after.json")
calls = after["kartra_calls"] - before["kartra_calls"]
refused = after["kartra_rate_limited"] - before["kartra_rate_limited"]
admitted = calls / rate["ok_span_seconds"] if rate["ok_span_seconds"] else 0
print("## Credential providers (bench/credentials.sh)\n")
print(f"- Run: {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, Linux {platform.release()}; "
      "release builds, each service its own process, `RUST_LOG=warn`\n")
print("### Kartra's limit kept by two proxy replicas together\n")
print(f"Two api-proxy processes, one database, three Kartra connections of one App, offered "
      f"{rate['offered_per_second']:.1f} calls/s together (three times Kartra's 20/s per App), open loop, for "
      f"{rate_seconds} s, against the mock provider's Kartra stand-in (which answers 429 past 20 calls in any "
      "second). Calls over the limit wait for a free slot within their deadline (30 s, the default) or are "
      "refused with our own 429.\n")
print("| offered | reached Kartra | refused by Kartra (429) | admitted rate | of the limit | answered 200 | our 429 | other | errors | p50 / p99 wait+call ms |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
print(f"| {rate['offered']} | {calls} | {refused} | {admitted:.2f}/s | {admitted / 20:.0%} | {rate['ok']} | "
      f"{rate['proxy_429']} | {rate['other'] + rate['provider_429_relayed']} | {rate['errors']} | "
      f"{rate['ok_p50_ms']:.0f} / {rate['ok_p99_ms']:.0f} |\n")
print(f"Admitted rate: calls that reached Kartra divided by the {rate['ok_span_seconds']:.1f} s from the first call "
      "to the last answer (the queue drains at the limit after the offer stops).\n")
print("### api-proxy's CPU per call: form-body injection against bearer injection\n")
print(f"The same POST with the same 50-byte form body, through one api-proxy (2 workers) to nginx answering a "
      f"fixed body, {conc} connections, {rounds} rounds of {duration} s taking turns: as `mock` (a bearer token in "
      "`Authorization`, the body passed through) and as `kartra` (the body parsed, the caller's `app_id`, "
      "`api_key` and `api_password` dropped, the connection's appended, the length stated anew).\n")
print("| injection | requests/s | p50 ms | p99 ms | CPU µs/request by round | CPU µs/request (median) |")
print("|---|---:|---:|---:|---:|---:|")
med = {}
for name in ("bearer", "form"):
    cpu, rps, p50, p99 = [], [], [], []
    for r in range(1, rounds + 1):
        d = j(f"cpu-{name}-{r}.json")
        ok = d["statusCodeDistribution"].get("200", 0)
        b, a, tck = map(int, open(f"{work}/cpu-{name}-{r}.txt").read().split())
        cpu.append((a - b) / tck * 1e6 / max(ok, 1))
        rps.append(ok / d["summary"]["total"])
        p50.append(d["latencyPercentiles"]["p50"] * 1000)
        p99.append(d["latencyPercentiles"]["p99"] * 1000)
    med[name] = statistics.median(cpu)
    label = "bearer (`mock`)" if name == "bearer" else "form body (`kartra`)"
    print(f"| {label} | {statistics.median(rps):,.0f} | {statistics.median(p50):.2f} | {statistics.median(p99):.2f} | "
          f"{', '.join(f'{c:.1f}' for c in cpu)} | {med[name]:.1f} |")
print(f"\nForm-body injection costs {med['form'] / med['bearer']:.2f}x the CPU of bearer injection per call "
      "(target: within 1.10x).")
PY
# Replace the section in docs/benchmarks.md, or add it at the end (bench/run.sh regenerates
# the top of the file and keeps everything from its hand-written reading on, this included).
python3 - "$work/section.md" <<'PY'
import sys
section = open(sys.argv[1]).read().rstrip() + "\n"
path = "docs/benchmarks.md"
doc = open(path).read()
start = doc.find("## Credential providers")
if start >= 0:
    end = doc.find("\n## ", start + 3)
    doc = doc[:start] + section + (doc[end:] if end >= 0 else "")
else:
    doc = doc.rstrip() + "\n\n" + section
open(path, "w").write(doc)
PY
cat "$work/section.md"
