#!/usr/bin/env bash
# api-proxy under attack: legitimate callers' throughput while a slowloris holds 20,000 sockets
# (two processes of 10,000, each socket sending a byte of a never-finished head every five
# seconds and reopening when closed), and while a flood of made-up API keys arrives at a fixed
# rate, each against the same callers with no attack, in alternating rounds of one run: with the
# callers calling as fast as they can (every core busy, so whatever the attack costs anyone on
# the machine shows), then calling at a steady rate of half that.
# The attacking processes run under SCHED_IDLE (only on CPU time nothing else wants): on a
# 2-core machine they would otherwise take their own CPU from the callers and the proxy alike,
# and the figures would say how busy the attackers were rather than what the attack costs the
# proxy (the kernel's work for their sockets is still done, and charged where it falls). The proxy's own CPU
# per legitimate call, attack included, is reported beside the throughput.
# Writes docs/benchmarks-attacks.md.
# Usage: bench/attacks.sh   (ATTACK_ROUNDS=3 ATTACK_SECONDS=10 ATTACK_CONCURRENCY=32
#                            ATTACK_SOCKETS=10000 (per process, two processes) ATTACK_FLOOD_RATE=4200
#                            ATTACK_PROXY_NOFILE=65536)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ATTACK_ROUNDS:-3}
SECONDS_EACH=${ATTACK_SECONDS:-10}
CONC=${ATTACK_CONCURRENCY:-32}
WARM=${ATTACK_WARMUP_SECONDS:-6}
SOCKETS=${ATTACK_SOCKETS:-10000}
RATE=${ATTACK_FLOOD_RATE:-4200}
NOFILE=${ATTACK_PROXY_NOFILE:-65536}
GW=18380 PRX_DEV=18381 RF=18382 MOCK=18390 PRX=18393

bash scripts/services.sh
cargo build --release --locked -p devstack -p api-proxy
bin=${CARGO_TARGET_DIR:-target}/release

work=$(mktemp -d)
run_id="attack_$$"
db="authbridge_$run_id"
KEY=$(head -c 32 /dev/urandom | base64)
API_KEY="attack-bench-key-0123456789"
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

# The mock provider (its API is the upstream) and one real connection, made through the flow.
AUTHBRIDGE_ENCRYPTION_KEY=$KEY AUTHBRIDGE_DEV_DATABASE=$db AUTHBRIDGE_DEV_QUEUE_PREFIX="authbridge-$run_id" \
AUTHBRIDGE_DEV_API_KEY=$API_KEY AUTHBRIDGE_DEV_TOKEN_TTL_SECONDS=86400 \
AUTHBRIDGE_DEV_GATEWAY_PORT=$GW AUTHBRIDGE_DEV_PROXY_PORT=$PRX_DEV AUTHBRIDGE_DEV_REFRESHER_PORT=$RF \
AUTHBRIDGE_DEV_MOCK_PORT=$MOCK RUST_LOG=warn "$bin/authbridge-dev" > "$work/dev.log" 2>&1 &
dev_pid=$!
pids+=($dev_pid)
wait_http "http://127.0.0.1:$GW/readyz"
url=$(curl -fs -X POST "http://127.0.0.1:$GW/v1/connect/sessions" -H "Authorization: Bearer $API_KEY" \
  -H 'Content-Type: application/json' \
  -d '{"provider":"mock","connection_id":"caller","return_url":"https://app.example/done"}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["connect_url"])')
for _ in 1 2 3; do url=$(curl -s -b "$work/jar" -c "$work/jar" -o /dev/null -w '%{redirect_url}' "$url"); done
case "$url" in *status=connected*) ;; *) echo "could not create the connection: $url" >&2; exit 1 ;; esac
PROXY_KEY=$(curl -fs -X POST "http://127.0.0.1:$GW/v1/api-keys" -H "Authorization: Bearer $API_KEY" \
  -H 'Content-Type: application/json' -d '{"name":"attack-bench","scopes":["proxy"],"providers":["mock"]}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')

# The api-proxy binary on its own (its own process, file-descriptor limit and cores), as deployed.
cat > "$work/providers.toml" <<TOML
[providers.mock]
authorize_url = "http://127.0.0.1:$MOCK/oauth/authorize"
token_url = "http://127.0.0.1:$MOCK/oauth/token"
api_base_url = "http://127.0.0.1:$MOCK/api/"
client_id = "authbridge-client"
client_secret = "s3cret:with&odd=chars"
TOML
# docker-compose.yml gives each service 65,536 open files; so does this, where the machine allows
# it (raising the hard limit takes root), or the most it does.
(ulimit -n "$NOFILE" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
AUTHBRIDGE_DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db" AUTHBRIDGE_ENCRYPTION_KEY=$KEY \
AUTHBRIDGE_API_KEYS=$API_KEY AUTHBRIDGE_PROVIDERS_FILE="$work/providers.toml" \
AUTHBRIDGE_QUEUE_PREFIX="authbridge-$run_id" AUTHBRIDGE_PROXY_BIND="127.0.0.1:$PRX" RUST_LOG=warn \
  exec "$bin/api-proxy" > "$work/api-proxy.log" 2>&1) &
proxy_pid=$!
pids+=($proxy_pid)
wait_http "http://127.0.0.1:$PRX/readyz"
TARGET="http://127.0.0.1:$PRX/proxy/mock/caller/contacts/42"
curl -fs "$TARGET" -H "Authorization: Bearer $PROXY_KEY" >/dev/null
limit=$(awk '/Max open files/ {print $4}' "/proc/$proxy_pid/limits")

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# The machine's CPU time by kind: user (nice included), system, softirq, idle (iowait included).
machine() { awk '/^cpu / {print $2 + $3, $4, $8, $5 + $6}' /proc/stat; }
tick=$(getconf CLK_TCK)
# One phase: the callers open their connections, an attack (a function, or none) begins a second
# later, and after WARM seconds the callers' calls are counted for SECONDS_EACH seconds, with the
# CPU time over those seconds of the proxy and of the dev stack (the mock provider behind the
# proxy), the callers' own, and the machine's by kind; and meanwhile a caller with no connection
# open makes a call on a new connection every 100 ms.
# With a second argument, the callers call at that rate instead of as fast as they can.
phase() {
  local lg fr att p0 p1 d0 d1 m0 m1
  "$bin/authbridge-loadgen" calls "$TARGET" "$PROXY_KEY" "$CONC" "$SECONDS_EACH" "$WARM" ${2:-} > "$work/calls.json" &
  lg=$!
  sleep 1
  att=""
  if [ "$1" != none ]; then "$1" & att=$!; fi
  sleep $((WARM - 1))
  p0=$(cpu_ticks "$proxy_pid") d0=$(cpu_ticks "$dev_pid") m0=$(machine)
  "$bin/authbridge-loadgen" fresh "$TARGET" "$PROXY_KEY" 100 "$SECONDS_EACH" > "$work/fresh.json" &
  fr=$!
  wait "$lg"
  p1=$(cpu_ticks "$proxy_pid") d1=$(cpu_ticks "$dev_pid") m1=$(machine)
  wait "$fr"
  if [ -n "$att" ]; then wait "$att"; fi
  python3 - "$(cat "$work/calls.json")" "$p0" "$p1" "$d0" "$d1" "$m0" "$m1" "$tick" "$(cat "$work/fresh.json")" <<'PY'
import json, sys
d = json.loads(sys.argv[1])
p0, p1, d0, d1 = map(int, sys.argv[2:6])
m0, m1 = [list(map(int, a.split())) for a in sys.argv[6:8]]
t = int(sys.argv[8])
d["proxy_cpu_seconds"] = (p1 - p0) / t
d["dev_cpu_seconds"] = (d1 - d0) / t
d["machine_seconds"] = dict(zip(["user", "system", "softirq", "idle"], [(b - a) / t for a, b in zip(m0, m1)]))
d["fresh"] = json.loads(sys.argv[9])
print(json.dumps(d))
PY
}
# The attacks, lasting from a second into the phase to its end.
hold=$((WARM - 1 + SECONDS_EACH + 1))
slowloris() {
  attacker slowloris "127.0.0.1:$PRX" "$SOCKETS" "$hold" > "$work/sl1.json" &
  attacker slowloris "127.0.0.1:$PRX" "$SOCKETS" "$hold" > "$work/sl2.json" &
  wait
}
keyflood() { attacker keyflood "$TARGET" "$RATE" "$hold" > "$work/kf.json"; }
attacker() { chrt --idle 0 "$bin/authbridge-loadgen" "$@"; }
lookups() { curl -s "http://127.0.0.1:$PRX/metrics" | awk '/^authbridge_api_key_lookups_total / {print $2}'; }
rss() { awk '/VmHWM/ {print $2}' "/proc/$proxy_pid/status"; }

results="$work/results.jsonl"
: > "$results"
for round in $(seq "$ROUNDS"); do
  echo "round $round: no attack"
  echo "{\"round\":$round,\"phase\":\"none\",\"calls\":$(phase none)}" >> "$results"

  echo "round $round: slowloris, $((2 * SOCKETS)) sockets"
  c=$(phase slowloris)
  echo "{\"round\":$round,\"phase\":\"slowloris\",\"calls\":$c,\"attack\":[$(cat "$work/sl1.json"),$(cat "$work/sl2.json")]}" >> "$results"

  echo "round $round: no attack"
  echo "{\"round\":$round,\"phase\":\"none\",\"calls\":$(phase none)}" >> "$results"

  echo "round $round: made-up keys at $RATE/s"
  before=$(lookups)
  c=$(phase keyflood)
  after=$(lookups)
  echo "{\"round\":$round,\"phase\":\"keyflood\",\"calls\":$c,\"attack\":$(cat "$work/kf.json"),\"lookups\":$((after - before))}" >> "$results"

  # The same attacks against callers at a steady rate, half what they reached in this round's
  # first phase: how a proxy that is not already at the limit of its cores fares.
  steady=$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(round(r["calls"]["calls_per_second"] / 2))' "$(head -n "$(( (round - 1) * 7 + 1 ))" "$results" | tail -n 1)")
  echo "round $round: at $steady calls/s, no attack"
  echo "{\"round\":$round,\"phase\":\"steady-none\",\"calls\":$(phase none "$steady")}" >> "$results"
  echo "round $round: at $steady calls/s, slowloris"
  c=$(phase slowloris "$steady")
  echo "{\"round\":$round,\"phase\":\"steady-slowloris\",\"calls\":$c,\"attack\":[$(cat "$work/sl1.json"),$(cat "$work/sl2.json")]}" >> "$results"
  echo "round $round: at $steady calls/s, made-up keys"
  before=$(lookups)
  c=$(phase keyflood "$steady")
  after=$(lookups)
  echo "{\"round\":$round,\"phase\":\"steady-keyflood\",\"calls\":$c,\"attack\":$(cat "$work/kf.json"),\"lookups\":$((after - before))}" >> "$results"
done

python3 - "$results" "$limit" "$(rss)" "$CONC" "$SECONDS_EACH" "$SOCKETS" "$RATE" "$WARM" <<'PY'
import json, statistics, sys
path, limit, rss, conc, secs, sockets, rate, warm = sys.argv[1:]
rows = [json.loads(l) for l in open(path)]
rounds = sorted({r["round"] for r in rows})
def rate_of(r): return r["calls"]["calls_per_second"]
out = []
w = out.append
w("# api-proxy under attack\n")
w("Written by `bench/attacks.sh`. Legitimate callers: %s kept-alive connections calling the proxy "
  "(a real connection, its API key checked, the mock provider's API behind it), first as fast as "
  "they can (what the machine can serve), then at a steady rate of half that (a proxy with room "
  "to spare, as a deployment normally runs); opened a second "
  "before the attack begins and counted for %s s from %s s into the phase; "
  "each attack phase is compared with the phases without an attack around it, in the same run on "
  "the same machine (2 cores shared by the proxy, the callers, the attackers and the mock; the "
  "attacking processes under SCHED_IDLE, so that what is measured is what the attack costs the proxy, "
  "not the CPU the attacking programs take for themselves). Meanwhile a caller with no connection "
  "open makes a call on a new connection every 100 ms.\n" % (conc, secs, warm))
w("- **slowloris**: two processes holding %s sockets each (%s in all), each sending a byte of a "
  "head it never finishes every 5 s and reopening when closed, each from a loopback address of "
  "its own (as a distributed attack's would be). The proxy's open-files limit was %s, "
  "so its connection cap was %s." % (sockets, 2 * int(sockets), limit, int(limit) // 4 * 3))
w("- **made-up keys**: %s requests/s with API keys that were never issued (a third of no issued "
  "shape, a third of the current shape with a wrong checksum, a third of the legacy shape), from "
  "one address.\n" % rate)
w("| round | no attack (calls/s) | slowloris (calls/s) | ratio | no attack (calls/s) | made-up keys (calls/s) | ratio |")
w("|---|---|---|---|---|---|---|")
ratios = {"slowloris": [], "keyflood": []}
for n in rounds:
    rr = [r for r in rows if r["round"] == n]
    base1, sl, base2, kf = rr[:4]
    r1 = rate_of(sl) / rate_of(base1)
    r2 = rate_of(kf) / rate_of(base2)
    ratios["slowloris"].append(r1)
    ratios["keyflood"].append(r2)
    w("| %d | %.0f | %.0f | %.2f | %.0f | %.0f | %.2f |" % (n, rate_of(base1), rate_of(sl), r1, rate_of(base2), rate_of(kf), r2))
w("")
w("Median ratio: **%.2f** during the slowloris, **%.2f** during the flood of made-up keys." %
  (statistics.median(ratios["slowloris"]), statistics.median(ratios["keyflood"])))
# The phases without an attack vary from one to the next by more than the attacks' effect, so
# the attack phases' median rate against all the unattacked phases' is given too.
calm = statistics.median(rate_of(r) for r in rows if r["phase"] == "none")
w("")
w("Median rate of each kind of phase: %.0f calls/s without an attack; during the slowloris %.0f "
  "(%.2f of it); during the flood of made-up keys %.0f (%.2f)." % (calm,
  statistics.median(rate_of(r) for r in rows if r["phase"] == "slowloris"),
  statistics.median(rate_of(r) for r in rows if r["phase"] == "slowloris") / calm,
  statistics.median(rate_of(r) for r in rows if r["phase"] == "keyflood"),
  statistics.median(rate_of(r) for r in rows if r["phase"] == "keyflood") / calm))
w("")
w("At a steady rate (half what the callers reached in the round's first phase), the rate served and "
  "the latency of the calls counted from when each was due:\n")
w("| round | offered (calls/s) | no attack: served, p50 ms, p99 ms | slowloris: served, p50, p99 | ratio | made-up keys: served, p50, p99 | ratio |")
w("|---|---|---|---|---|---|---|")
steady = {"slowloris": [], "keyflood": []}
def lat(r): return "%.0f, %.2f, %.2f" % (rate_of(r), r["calls"]["latency_ms"]["p50"], r["calls"]["latency_ms"]["p99"])
for n in rounds:
    rr = {r["phase"]: r for r in rows if r["round"] == n}
    b, sl, kf = rr["steady-none"], rr["steady-slowloris"], rr["steady-keyflood"]
    steady["slowloris"].append(rate_of(sl) / rate_of(b))
    steady["keyflood"].append(rate_of(kf) / rate_of(b))
    w("| %d | %.0f | %s | %s | %.2f | %s | %.2f |" % (n, b["calls"]["offered_per_second"], lat(b), lat(sl), steady["slowloris"][-1], lat(kf), steady["keyflood"][-1]))
w("")
w("Median ratio at a steady rate: **%.2f** during the slowloris, **%.2f** during the flood of made-up keys." %
  (statistics.median(steady["slowloris"]), statistics.median(steady["keyflood"])))
w("")
w("Every phase: legitimate calls, the failed ones (non-2xx answers or errors), latency, and the "
  "proxy's CPU time per legitimate call (the attack's cost included):\n")
w("| round | phase | calls | other answers | errors | p50 ms | p99 ms | proxy CPU per call (us) | new connection: calls, failed | p50 ms | p99 ms |")
w("|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    c = r["calls"]
    f = c["fresh"]
    per = c["proxy_cpu_seconds"] / max(c["calls"], 1) * 1e6
    w("| %d | %s | %d | %d | %d | %.2f | %.2f | %.1f | %d, %d | %.1f | %.1f |" % (r["round"], r["phase"], c["calls"], c["other_answers"], c["errors"], c["latency_ms"]["p50"], c["latency_ms"]["p99"], per, f["calls"], f["failed"], f["latency_ms"]["p50"], f["latency_ms"]["p99"]))
w("")
w("Where the two cores' time went in each phase, in CPU-seconds over the phase's %s s (the machine "
  "has %s): the proxy; the dev stack, which is the mock provider answering behind it; the callers' load "
  "generator (over its whole run, warm-up included, scaled to the phase's length); the attacking processes (over their whole run, which starts before the phase and ends "
  "after it, scaled to the phase's length); and, across the machine, time in softirq (packets, "
  "which the kernel handles on whichever process is running) and time idle:\n" % (secs, 2 * int(secs)))
w("| round | phase | calls/s | proxy | mock | callers | attackers | softirq | idle |")
w("|---|---|---|---|---|---|---|---|---|")
for r in rows:
    c = r["calls"]
    m = c.get("machine_seconds", {})
    att = r.get("attack")
    if isinstance(att, dict):
        att = [att]
    attackers = sum(a.get("cpu_seconds", 0) * int(secs) / a.get("seconds", int(secs)) for a in att) if att else 0.0
    w("| %d | %s | %.0f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |" % (r["round"], r["phase"], rate_of(r),
      c["proxy_cpu_seconds"], c.get("dev_cpu_seconds", 0), c.get("cpu_seconds", 0) * int(secs) / (int(secs) + int(warm)), attackers,
      m.get("softirq", 0), m.get("idle", 0)))
w("")
w("What the attacks saw:\n")
for r in rows:
    if r["phase"] in ("slowloris", "steady-slowloris"):
        held = sum(a["peak_held"] for a in r["attack"])
        opened = sum(a["connections_opened"] for a in r["attack"])
        closed = sum(a["closed_by_server"] for a in r["attack"])
        w("- round %d, %s: %d sockets held at the peak (both processes), %d connections opened, %d closed by the proxy" % (r["round"], r["phase"], held, opened, closed))
    if r["phase"] in ("keyflood", "steady-keyflood"):
        a = r["attack"]
        w("- round %d, %s: %d sent (%.0f/s), answers %s, database lookups %d" % (r["round"], r["phase"], a["sent"], a["per_second"], json.dumps(a["by_status"]), r["lookups"]))
w("\nPeak RSS of api-proxy over the run: %.0f MiB." % (int(rss) / 1024))
open("docs/benchmarks-attacks.md", "w").write("\n".join(out) + "\n")
print("\n".join(out))
PY
