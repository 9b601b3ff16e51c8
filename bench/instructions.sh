#!/usr/bin/env bash
# User-space instructions per proxied request, counted by valgrind's callgrind: unlike CPU time,
# the count does not move with what else the machine is doing, so two builds (or api-proxy and
# nginx) can be compared with small differences visible. Kernel work (the socket calls both pay
# alike) is not counted. Under valgrind, `rep movs`/`rep stos` (memcpy, memset) count one
# instruction per iteration, which overstates copying against real CPUs.
#
# Usage: bench/instructions.sh [api-proxy binary…]     (default: target/release/api-proxy)
#        BENCH_REQUESTS=20000 BENCH_CONCURRENCY=16
# Each binary is measured on the same upstream (nginx), then nginx adding a fixed header.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${BENCH_REQUESTS:-20000}
CONC=${BENCH_CONCURRENCY:-16}
UP=18390 NGX=18391 PRX=18393
bins=("$@")
[ ${#bins[@]} -gt 0 ] || bins=(target/release/api-proxy)
command -v valgrind >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq valgrind; }
command -v nginx >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq nginx-light; }
command -v oha >/dev/null 2>&1 || cargo install --locked oha
bash scripts/services.sh
[ -x target/release/authbridge-loadgen ] || cargo build --release --locked -p devstack

work=$(mktemp -d)
db="authbridge_instr_$$"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
wait_http() { for _ in $(seq 300); do curl -s -o /dev/null "$1" && return 0; sleep 0.2; done; echo "$1 did not come up" >&2; return 1; }

sed -e "s#__DIR__#$work#g" -e "s#__UPSTREAM_PORT__#$UP#g" bench/nginx-upstream.conf > "$work/nginx-upstream.conf"
nginx -c "$work/nginx-upstream.conf" -p "$work" -e "$work/upstream-error.log" &
pids+=($!)
wait_http "http://127.0.0.1:$UP/"
psql -q -h 127.0.0.1 -U postgres -d postgres -c "CREATE DATABASE \"$db\"" >/dev/null
cat > "$work/providers.toml" <<TOML
[providers.mock]
authorize_url = "http://127.0.0.1:9/oauth/authorize"
token_url = "http://127.0.0.1:9/oauth/token"
api_base_url = "http://127.0.0.1:$UP/"
client_id = "bench"
client_secret = "bench"
TOML
export AUTHBRIDGE_DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db"
AUTHBRIDGE_ENCRYPTION_KEY=$(head -c 32 /dev/urandom | base64)
export AUTHBRIDGE_ENCRYPTION_KEY
API_KEY="bench-api-key-0123456789"

# Zero the counters after a warm-up, load, dump: only the N measured requests are counted.
measure() { # label, url, pid to signal
  local label=$1 url=$2 pid=$3 out
  oha --no-tui -n 2000 -c "$CONC" -H "Authorization: Bearer $API_KEY" "$url" >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  oha --no-tui --output-format json -n "$N" -c "$CONC" -H "Authorization: Bearer $API_KEY" "$url" > "$work/oha.json"
  callgrind_control -d "$pid" >/dev/null 2>&1
  sleep 1
  out=$(ls -t "$work"/callgrind.out.* | head -1)
  python3 - "$label" "$out" "$work/oha.json" "$N" <<'PY'
import json, re, sys
label, path, oha, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
total = 0
for line in open(path):
    m = re.match(r"^summary:\s+(\d+)", line) or re.match(r"^totals:\s+(\d+)", line)
    if m:
        total = max(total, int(m.group(1)))
ok = json.load(open(oha))["statusCodeDistribution"].get("200", 0)
print(f"| {label} | {ok:,} of {n:,} | {total // n:,} |")
PY
  rm -f "$work"/callgrind.out.*
}

echo "| server | requests answered 200 | user-space instructions per request |"
echo "|---|---:|---:|"
for i in "${!bins[@]}"; do
  bin=${bins[$i]}
  AUTHBRIDGE_API_KEYS=$API_KEY AUTHBRIDGE_PROVIDERS_FILE="$work/providers.toml" \
  AUTHBRIDGE_QUEUE_PREFIX="authbridge-instr-$$" AUTHBRIDGE_PROXY_BIND="127.0.0.1:$PRX" RUST_LOG=warn \
    valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out.%p" "$bin" > "$work/proxy-$i.log" 2>&1 &
  pid=$!
  wait_http "http://127.0.0.1:$PRX/healthz"
  [ "$i" -gt 0 ] || target/release/authbridge-loadgen seed mock instr 1 86400 >/dev/null
  measure "api-proxy \`$bin\`" "http://127.0.0.1:$PRX/proxy/mock/instr0000000/contacts/42" "$pid"
  kill -INT "$pid"; wait "$pid" 2>/dev/null || true
done

# nginx as the reverse proxy, in one process (no master; valgrind's control pipe must belong to
# the measured process's user, and nginx's workers drop to `nobody`).
sed -e "s#__DIR__#$work#g" -e "s#__UPSTREAM_PORT__#$UP#g" -e "s#__NGINX_PORT__#$NGX#g" \
  -e "s#^worker_processes auto;#master_process off;#" bench/nginx-proxy.conf > "$work/nginx-proxy.conf"
valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out.%p" \
  nginx -c "$work/nginx-proxy.conf" -p "$work" -e "$work/proxy-error.log" > "$work/nginx-proxy.log" 2>&1 &
pid=$!
pids+=($pid)
wait_http "http://127.0.0.1:$NGX/"
measure "nginx adding a fixed \`Authorization\`" "http://127.0.0.1:$NGX/contacts/42" "$pid"
