#!/usr/bin/env python3
"""Turns one bench/run.sh run (oha JSON files) into docs/benchmarks.md."""
import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone

work, conc, duration, rate = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
order = ["direct", "nginx", "express", "api-proxy"]
STATUS = """## Where it stands

The target is api-proxy at or above nginx's throughput and within 10% of its p99. **It is not
there yet**: in this run it serves about half of nginx's requests per second, with roughly
twice its p99 at a fixed concurrency, while staying an order of magnitude ahead of the
Express + axios forwarder that the integration guides lead to. What the proxy does per call:
API-key check, per-key and per-connection rate limits (off by default), token from the
in-memory cache (no database round trip), URL and header rewriting, a pooled keep-alive
upstream call, a streamed response, and metrics. Changes already made because the profile
pointed at them: one upstream connection pool per worker (pooled connections had been driven
across runtimes), no regular expression in routing or the access log, no re-parsing of the
upstream URL. The profile now shows mostly context switches, copies and allocation; the next
steps are fewer allocations per call (headers, label strings), fewer wake-ups between the
server and client halves, and HTTP/2 to the upstream where offered.

Not measured yet (tracked in the performance issue): the refresher's throughput with 10,000
connections falling due at once, the gateway's callback throughput, and the proxy's p99 with
1,000,000 connections stored.
"""
label = {
    "direct": "upstream, called directly",
    "nginx": "nginx adding a fixed `Authorization`",
    "express": "Express + axios adding the bearer token",
    "api-proxy": "api-proxy (real connection, cache warm)",
}


def load(name, kind):
    with open(os.path.join(work, f"{name}-{kind}.json")) as f:
        return json.load(f)


def ms(v):
    return f"{v * 1000:.2f}" if v is not None else "n/a"


def row(name, kind):
    d = load(name, kind)
    s, p = d["summary"], d.get("latencyPercentiles", {})
    codes = d.get("statusCodeDistribution", {})
    total = sum(codes.values())
    ok = codes.get("200", 0)
    errors = sum(d.get("errorDistribution", {}).values())
    # Successful answers per second (oha's own figure counts failed requests too).
    return ok / s["total"], p.get("p50"), p.get("p99"), p.get("p99.9"), total, ok, errors


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
  f"(`BENCH_CONCURRENCY={conc} BENCH_DURATION={duration}`)")
w(f"- Machine: {os.cpu_count()} cores ({cpu()}), "
  f"{round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB, {platform.system()} {platform.release()}")
w(f"- Load: {oha}; {conc} connections, {duration} s per measurement after a 3 s warm-up")
w(f"- Upstream: nginx (1 worker) answering a fixed 62-byte JSON body; {nginx}; Node {node}")
w("- api-proxy: release build, its own process, default settings (2 HTTP workers), the")
w("  connection's token decrypted once and then served from its in-memory cache\n")
def table(title, rows):
    w(title + "\n")
    w("| target | requests/s | p50 ms | p99 ms | p99.9 ms | requests | non-200 | errors |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|")
    for n in order:
        rps, p50, p99, p999, total, ok, err = rows[n]
        w(f"| {label[n]} | {rps:,.0f} | {ms(p50)} | {ms(p99)} | {ms(p999)} | {total:,} | {total - ok:,} | {err:,} |")
    w("")


table(f"## At a fixed concurrency ({conc} connections)", peak)
table(f"## At an offered rate of {int(rate):,} requests/s (half of api-proxy's peak)", half)
a, d, x = peak["api-proxy"], peak["direct"], peak["nginx"]
ah, xh = half["api-proxy"], half["nginx"]
w("## Ratios\n")
w(f"- api-proxy / upstream direct: throughput {a[0] / d[0]:.2f}×")
w(f"- api-proxy / nginx: throughput {a[0] / x[0]:.2f}×, p99 {a[2] / x[2]:.2f}× at fixed concurrency, "
  f"p99 {ah[2] / xh[2]:.2f}× at half of api-proxy's peak")
w(f"- api-proxy / Express + axios: throughput {a[0] / peak['express'][0]:.2f}×\n")
w("## Memory (peak RSS during the run)\n")
w(f"- api-proxy: {rss['api-proxy'] / 1024:.1f} MiB")
w(f"- nginx reverse proxy (all processes): {rss['nginx'] / 1024:.1f} MiB")
w(f"- Express + axios: {rss['express'] / 1024:.1f} MiB\n")
w(STATUS)
profile = os.path.join(work, "profile.txt")
if os.path.exists(profile) and os.path.getsize(profile) > 0:
    w("## Where api-proxy's CPU time goes at peak\n")
    w("A flat profile of the api-proxy process (`perf record -F 499`, 10 s at the same load),")
    w("top 25 symbols by self time:\n")
    w("```")
    w(open(profile).read().rstrip())
    w("```\n")
print("\n".join(out))
