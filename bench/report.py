#!/usr/bin/env python3
"""Turns one bench/run.sh run (oha JSON files) into docs/benchmarks.md."""
import glob
import json
import math
import os
import statistics
import platform
import subprocess
import sys
from datetime import datetime, timezone

work, conc, duration, rate, flows, big = sys.argv[1:7]
order = ["direct", "nginx", "express", "api-proxy", "api-proxy-info"]
label = {
    "direct": "upstream, called directly",
    "nginx": "nginx adding a fixed `Authorization`",
    "express": "Express + axios adding the bearer token",
    "api-proxy": "api-proxy (real connection, cache warm)",
    "api-proxy-info": "api-proxy at `RUST_LOG=info` (the default: an access log line per call)",
}


def rounds(name, kind):
    """The run's rounds of one measurement, in order (an older run has one file, no round)."""
    found = sorted(glob.glob(os.path.join(work, f"{name}-{kind}-*.json")),
                   key=lambda f: int(f.rsplit("-", 1)[1].split(".")[0]))
    return found or [os.path.join(work, f"{name}-{kind}.json")]


def load(path):
    with open(path) as f:
        return json.load(f)


def ms(v):
    return f"{v * 1000:.2f}" if v is not None else "n/a"


def one(path):
    d = load(path)
    s, p = d["summary"], d.get("latencyPercentiles", {})
    codes = d.get("statusCodeDistribution", {})
    total = sum(codes.values())
    ok = codes.get("200", 0)
    errors = sum(d.get("errorDistribution", {}).values())
    # Successful answers per second (oha's own figure counts failed requests too).
    return ok / s["total"], p.get("p50"), p.get("p99"), p.get("p99.9"), total, ok, errors


def row(name, kind):
    """The median round's rates and percentiles (each figure's own median), the rounds' total
    counts, and each round's figures."""
    each = [one(p) for p in rounds(name, kind)]
    med = [statistics.median(r[i] for r in each) if all(r[i] is not None for r in each) else None
           for i in range(4)]
    return (*med, sum(r[4] for r in each), sum(r[5] for r in each), sum(r[6] for r in each), each)


def cpu_per_request(name):
    """Microseconds of CPU (user + system) the serving processes spent per answered request."""
    spent = ok = 0
    for path in rounds(name, "peak"):
        cpu_file = path.replace("-peak", "-cpu").replace(".json", ".txt")
        try:
            before, after, tck = map(int, open(cpu_file).read().split())
        except (OSError, ValueError):
            return None
        spent += (after - before) / tck
        ok += load(path).get("statusCodeDistribution", {}).get("200", 0)
    return spent / ok * 1e6 if ok else None


SERVER = "HTTP server (hyper: HTTP/2, streamed bodies)"
OUR_SERVER = "HTTP server (ours, HTTP/1.1): request parsing, answer writing, connection I/O"
CLIENT = "upstream client (hyper: HTTP/2, streamed bodies)"
OURS = "upstream client (ours, HTTP/1.1): request writing, answer parsing, pool"
PARTS = [  # (part, frame prefixes): a sample belongs to the innermost frame that names a part
    ("hyper", ("hyper::", "<hyper::", "hyper_util::", "<hyper_util::", "h2::", "<h2::")),
    (OUR_SERVER, ("api_proxy::h1_server::", "<api_proxy::h1_server::")),
    (OURS,
     ("api_proxy::h1::", "<api_proxy::h1::", "api_proxy::pool::", "<api_proxy::pool::")),
    ("authbridge: metrics and access log",
     ("shared::metrics", "shared::http::track_requests", "shared::http::record_request", "shared::http::request_span")),
    ("authbridge: key check, token cache, URL and header rewriting",
     ("api_proxy::", "<api_proxy::", "shared::auth", "<shared::auth", "shared::limits", "shared::telemetry")),
]


def classify(path):
    """Where the api-proxy's samples go, from the collapsed stacks of the profile."""
    cats = {}
    total = 0
    for line in open(path):
        stack, _, n = line.rstrip().rpartition(" ")
        n = int(n)
        total += n
        frames = stack.split(";")
        if "entry_SYSCALL" in stack:
            c = "kernel: socket reads, writes and epoll (the same work nginx pays)"
        elif frames[-1].endswith("_[k]"):
            c = "kernel: other (scheduling, interrupts)"
        else:
            c = "other (runtime, allocator outside the parts above, unattributed stacks)"
            for f in reversed(frames):
                hit = next((name for name, prefixes in PARTS if f.lstrip().startswith(prefixes)), None)
                if hit == "hyper":
                    # The same hyper code serves callers and calls providers: the task it runs in
                    # tells which (the pool's connection tasks and sends are the client's).
                    hyper_client = ("hyper::client::", "dispatch::Client", "h2::client")
                    ours = ("api_proxy::h1::", "<api_proxy::h1::", "api_proxy::pool::", "api_proxy::forward::send")
                    if any(h in g for g in frames for h in hyper_client):
                        c = CLIENT
                    elif any(g.lstrip().startswith(ours) for g in frames):
                        c = OURS  # hyper's I/O adapters and connector under our own client
                    else:
                        c = SERVER
                    break
                if hit:
                    c = hit
                    break
        cats[c] = cats.get(c, 0) + n
    return total, sorted(cats.items(), key=lambda kv: -kv[1])


def cpu():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


rss = json.load(open(os.path.join(work, "rss.json")))
peak = {n: row(n, "peak") for n in order}
half = {n: row(n, "half") for n in order}
oha = subprocess.run(["oha", "--version"], capture_output=True, text=True).stdout.strip()
nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()

out = []
w = out.append
w("# Benchmarks\n")
w("How much api-proxy adds to a request, measured against the physical limit and against the")
w("alternatives, in **one run on one machine** (the load generator, the proxies and the")
w("upstream share its cores: compare rows, not absolute numbers across machines).\n")
w(f"- Run: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, `bench/run.sh` "
  f"(`BENCH_CONCURRENCY={conc} BENCH_DURATION={duration} BENCH_ROUNDS={len(rounds('api-proxy', 'peak'))}`)")
w(f"- Machine: {os.cpu_count()} cores ({cpu()}), "
  f"{round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB, {platform.system()} {platform.release()}")
n_rounds = len(rounds("api-proxy", "peak"))
w(f"- Load: {oha}; {conc} connections; {n_rounds} rounds of {duration} s per measurement, the targets")
w("  taking turns within each round, after a 3 s warm-up of each; the tables show the median")
w("  round (each figure's median over the rounds) and every round's p99")
w(f"- Upstream: nginx (1 worker) answering a fixed 62-byte JSON body; {nginx}; Node {node}")
w("- Every service logs at `RUST_LOG=warn` here (no per-request access log line, spans off)")
w("- api-proxy: release build, its own process, default settings (2 HTTP workers), the")
w("  connection's token decrypted once and then served from its in-memory cache; called with an")
w("  API key issued through the management API (scope `proxy`, limited to the provider), as")
w("  internal services call it: looked up in PostgreSQL once, then checked in memory (re-read")
w("  every 5 s, the default `AUTHBRIDGE_API_KEY_CACHE_SECONDS`)\n")
def table(title, rows, with_cpu=False):
    w(title + "\n")
    extra = " CPU µs/request |" if with_cpu else ""
    w("| target | requests/s | p50 ms | p99 ms | p99.9 ms | p99 ms by round | requests | non-200 | errors |" + extra)
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if with_cpu else ""))
    for n in order:
        rps, p50, p99, p999, total, ok, err, each = rows[n]
        by_round = ", ".join(ms(r[2]) for r in each)
        c = ""
        if with_cpu:
            v = cpu_per_request(n)
            c = f" {v:.1f} |" if v is not None else " n/a |"
        w(f"| {label[n]} | {rps:,.0f} | {ms(p50)} | {ms(p99)} | {ms(p999)} | {by_round} | {total:,} | {total - ok:,} | {err:,} |" + c)
    w("")


table(f"## At a fixed concurrency ({conc} connections)", peak, with_cpu=True)
w("CPU µs/request: user + system CPU time of the serving processes (for nginx, master and")
w("workers; for api-proxy, its process) divided by the requests answered; the load generator")
w("and, for the proxies, the upstream are not included.\n")
table(f"## At an offered rate of {int(rate):,} requests/s (half of api-proxy's peak)", half)
a, d, x = peak["api-proxy"], peak["direct"], peak["nginx"]
ah, xh = half["api-proxy"], half["nginx"]
w("## Ratios\n")
w(f"- api-proxy / upstream direct: throughput {a[0] / d[0]:.2f}×")
w(f"- api-proxy / nginx: throughput {a[0] / x[0]:.2f}×, p99 {a[2] / x[2]:.2f}× at fixed concurrency, "
  f"p99 {ah[2] / xh[2]:.2f}× at half of api-proxy's peak")
w(f"- api-proxy / Express + axios: throughput {a[0] / peak['express'][0]:.2f}×")
ai = peak["api-proxy-info"]
ci, cw = cpu_per_request("api-proxy-info"), cpu_per_request("api-proxy")
w(f"- api-proxy at `RUST_LOG=info` / at `warn`: throughput {ai[0] / a[0]:.2f}×, p99 {ai[2] / a[2]:.2f}×"
  + (f", CPU per request {ci / cw:.2f}×" if ci and cw else "")
  + " (by round: " + ", ".join(f"{p[0] / q[0]:.2f}×" for p, q in zip(ai[7], a[7])) + ")")
pairs = list(zip(a[7], x[7]))
w("- api-proxy / nginx round by round (the two ran back to back in each round): throughput "
  + ", ".join(f"{p[0] / q[0]:.2f}×" for p, q in pairs) + "; p99 "
  + ", ".join(f"{p[2] / q[2]:.2f}×" for p, q in pairs) + " at fixed concurrency, "
  + ", ".join(f"{p[2] / q[2]:.2f}×" for p, q in zip(ah[7], xh[7])) + " at half the peak\n")

# The system, each service its own process.
fl = json.load(open(os.path.join(work, "flows.json")))
dr = json.load(open(os.path.join(work, "drain.json")))
w("## The system: gateway, refresher, and a large connection table\n")
w("Each service runs as its own release-build process with default settings (2 HTTP workers,")
w("refresher prefetch 16, one refresher replica) against the mock provider, on a fresh database.\n")
w(f"### Gateway: {int(flows):,} complete connect flows, {conc} at a time\n")
w("Each flow: create a connect session (API), open the connect URL (state + PKCE, 302 to the")
w("provider), the mock provider's authorize endpoint (302 back), and the callback, which")
w("exchanges the code at the provider's token endpoint, seals the tokens (AES-256-GCM) and")
w("stores them with their expiry event in one transaction. All parties share the 2 cores.\n")
cb = fl["callback_ms"]
w("| flows | connected | failed | seconds | flows/s | callback p50 ms | p99 ms | p99.9 ms | max ms |")
w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
w(f"| {fl['flows']:,} | {fl['connected']:,} | {fl['failed']:,} | {fl['seconds']:.1f} | {fl['flows_per_second']:,.0f} "
  f"| {cb['p50']:.2f} | {cb['p99']:.2f} | {cb['p999']:.2f} | {cb['max']:.2f} |\n")
if fl.get("errors"):
    w("Errors seen: " + "; ".join(f"`{e}`" for e in fl["errors"]) + "\n")
lt = dr["lateness_ms"]
w(f"### Refresher: {dr['connections']:,} connections falling due at one instant\n")
w("The connections made above are all set to fall due at the same instant 20 s ahead, and their")
w("expiry events are written to the outbox, as the gateway does; the events travel through")
w("RabbitMQ's delay tiers to the work queue, and the refresher refreshes each one at the mock")
w("provider (refresh-token rotation on). Lateness: when the refreshed token was stored, behind")
w("the scheduled instant (negative: ahead of it; the refresher takes an event up to 1 s early).\n")
w("| connections | refreshed | statuses after | drained in s | refreshes/s | lateness p50 ms | p99 ms | p99.9 ms | max ms |")
w("|---:|---:|---|---:|---:|---:|---:|---:|---:|")
st = ", ".join(f"{k} {v:,}" for k, v in sorted(dr["by_status"].items()))
w(f"| {dr['connections']:,} | {dr['refreshed']:,} | {st} | {dr['drain_seconds']:.1f} | {dr['refreshes_per_second']:,.0f} "
  f"| {lt['p50']:.0f} | {lt['p99']:.0f} | {lt['p999']:.0f} | {lt['max']:.0f} |\n")
w(f"### api-proxy with {int(big):,} connections stored\n")
w("The same load (random calls over the same 10,000 connection ids, " + conc + " connections,")
w(f"{duration} s after a 3 s warm-up) against a table of 10,000 connections and one of {int(big):,},")
w("with the token cache at its default (30 s) and turned off (every call reads and decrypts the")
w("row in PostgreSQL).\n")
w("| table | token cache | requests/s | p50 ms | p99 ms | p99.9 ms | errors | peak RSS MiB |")
w("|---:|---|---:|---:|---:|---:|---:|---:|")
tab = {}
for cache in ("30", "0"):
    for size in ("small", "big"):
        d = json.load(open(os.path.join(work, f"table-{size}-cache{cache}.json")))
        p = d.get("latencyPercentiles", {})
        ok = d.get("statusCodeDistribution", {}).get("200", 0)
        err = sum(d.get("errorDistribution", {}).values()) + sum(
            v for k, v in d.get("statusCodeDistribution", {}).items() if k != "200")
        r = int(open(os.path.join(work, f"table-{size}-cache{cache}.rss")).read().strip() or 0)
        tab[(size, cache)] = p.get("p99")
        n = 10000 if size == "small" else int(big)
        w(f"| {n:,} | {'on (30 s)' if cache == '30' else 'off'} | {ok / d['summary']['total']:,.0f} | {ms(p.get('p50'))} "
          f"| {ms(p.get('p99'))} | {ms(p.get('p99.9'))} | {err:,} | {r / 1024:.1f} |")
w("")
w(f"p99 with {int(big):,} rows / with 10,000 rows: {tab[('big', '30')] / tab[('small', '30')]:.2f}× with the cache, "
  f"{tab[('big', '0')] / tab[('small', '0')]:.2f}× without it.\n")

w("## Memory (peak RSS of each process during the run)\n")
for k, v in rss.items():
    w(f"- {k}: {v / 1024:.1f} MiB")
w("")

# Where it stands, from this run's numbers.
ratio, p99r = a[0] / x[0], a[2] / x[2]
ca, cx = cpu_per_request("api-proxy"), cpu_per_request("nginx")
w("## Where it stands\n")
# The throughput ratio, round by round: each round ran api-proxy and nginx back to back, so the
# rounds are paired samples. Their geometric mean and its 95% interval (Student's t over the log
# ratios) say whether the difference is larger than what the machine varies by.
logs = [math.log(p[0] / q[0]) for p, q in pairs]
gm = math.exp(statistics.fmean(logs))
interval = None
if len(logs) > 1:
    t95 = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78, 6: 2.57, 7: 2.45, 8: 2.36, 9: 2.31}.get(len(logs), 2.26)
    half_width = t95 * statistics.stdev(logs) / math.sqrt(len(logs))
    interval = (math.exp(statistics.fmean(logs) - half_width), math.exp(statistics.fmean(logs) + half_width))
if interval and interval[0] > 1.0:
    standing = "above nginx's"
elif ratio >= 1.0 or (interval and interval[0] <= 1.0 <= interval[1] and gm >= 0.98):
    # Within the rounds' spread of parity, and no more than 2% under it on average.
    standing = "at nginx's"
else:
    standing = "below nginx's"
met = standing != "below nginx's" and p99r <= 1.10
w(f"The target is api-proxy at or above nginx's throughput and within 10% of its p99. In this run:")
w(f"**{ratio:.2f}× nginx's throughput and {p99r:.2f}× its p99** at a fixed concurrency"
  + (" — the target is met" if met else " — **the target is not met**")
  + f";\nat half of api-proxy's peak rate its p99 is {ah[2] / xh[2]:.2f}× nginx's.")
if interval:
    w(f"Round by round, api-proxy's throughput averaged {gm:.3f}× nginx's (geometric mean of {len(logs)} paired")
    w(f"rounds; 95% interval {interval[0]:.3f}–{interval[1]:.3f}×): {standing}, as far as this run can tell")
    w("(\"at\": the interval holds 1.0 and the mean is within 2% of it).")
if ca and cx:
    w(f"Per request, api-proxy spends {ca:.1f} µs of CPU where nginx spends {cx:.1f} µs.")
    if abs(ca - cx) <= 0.02 * cx:
        w("That is the same cost within 2%: on two cores shared with the load generator and the")
        w("upstream, the two then serve about the same number of requests, and a round's ratio moves")
        w("with what else the machine was doing in it.")
    elif ca > cx and met:
        w("Throughput and latency meet the target in this run, but the proxy still costs more CPU per")
        w("request than nginx: where the proxy is the one that runs out of CPU, that is the gap to watch.")
    elif ca > cx and ratio < 1.0:
        w("On two cores shared with the load generator and the upstream, that CPU difference is the")
        w("throughput gap.")
    elif ca > cx:
        w("On two saturated cores shared with the load generator and the upstream, the proxy's extra")
        w("CPU per request is CPU the load generator does not get: the p99 at a fixed concurrency")
        w("moves with how long the load generator waits to run (see the notes below).")
w("")
profile = os.path.join(work, "profile.txt")
collapsed = os.path.join(work, "collapsed.txt")
if os.path.exists(collapsed) and os.path.getsize(collapsed) > 0:
    total, cats = classify(collapsed)
    w("## Where api-proxy's CPU time goes at peak\n")
    w("From the sampled profile (`perf record --call-graph dwarf`, 8 s at the same load; flame graph:")
    w("[`docs/api-proxy-flamegraph.svg`](api-proxy-flamegraph.svg)), each sample counted for the")
    w("innermost part of the proxy on its stack (allocation counts for the part that allocated):\n")
    w("| part | share of samples |")
    w("|---|---:|")
    for c, n in cats:
        w(f"| {c} | {100 * n / total:.1f}% |")
    w("")
if os.path.exists(profile) and os.path.getsize(profile) > 0:
    w("Top 25 symbols by self time:\n")
    w("```")
    w(open(profile).read().rstrip())
    w("```\n")
w(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "NOTES.md")).read().rstrip() + "\n")
print("\n".join(out))
