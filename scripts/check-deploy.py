#!/usr/bin/env python3
"""Checks that docker-compose.yml and the files in deploy/ agree with each other and with the code.

Containers cannot run where the tests run (no Docker daemon, no image registry), so this is how
the deployment's wiring is tested: every environment variable a service is given is one the code
reads, every health check and scrape target uses the port its service listens on, every file
mounted exists and parses, the telemetry services sit under the `telemetry` profile, the
collector's pipeline only names parts it defines and exports to a service of the file, and the
demo provider's file points at the mock provider with the mock's credentials.

Usage: python3 scripts/check-deploy.py   (exits 1 and names each problem found)
"""
import pathlib
import re
import sys
import tomllib

try:
    import yaml
except ImportError:  # pragma: no cover - the machine's Python normally has it
    sys.exit("check-deploy: PyYAML is missing (pip install pyyaml)")

ROOT = pathlib.Path(__file__).resolve().parent.parent
problems = []


def problem(msg):
    problems.append(msg)


compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
services = compose["services"]

# The code's own strings: every variable the compose file sets must be read somewhere.
sources = "\n".join(p.read_text() for p in ROOT.glob("*/src/**/*.rs"))
builtin_ids = set(re.findall(r"^\[providers\.([a-z0-9_-]+)\]$", (ROOT / "shared" / "src" / "providers.toml").read_text(), re.M))
ours = {"auth-gateway", "api-proxy", "token-refresher", "mock-provider"}
# The variables the container images' own programs read (not ours).
image_env = {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "RABBITMQ_DEFAULT_USER",
             "RABBITMQ_DEFAULT_PASS", "COLLECTOR_OTLP_ENABLED"}
for name, svc in services.items():
    for var in (svc.get("environment") or {}):
        if name in ours:
            # Provider credentials are read by a pattern (`{PROVIDER}_CLIENT_ID`), for the
            # providers of the catalog's built-ins.
            m = re.fullmatch(r"([A-Z]+)_CLIENT_(ID|SECRET)", var)
            if m and not var.startswith("MOCK_"):
                if m.group(1).lower() not in builtin_ids:
                    problem(f"{name}: {var} is set but {m.group(1).lower()} is not a built-in provider")
                continue
            if f'"{var}"' not in sources:
                problem(f"{name}: {var} is set but no code reads it")
        elif var not in image_env:
            problem(f"{name}: {var} is not a variable the image is known to read")

# Each of our services listens on its default port (or the one its bind variable sets here);
# health checks, published ports and scrape targets use it.
binds = {"auth-gateway": "AUTHBRIDGE_GATEWAY_BIND", "api-proxy": "AUTHBRIDGE_PROXY_BIND",
         "token-refresher": "AUTHBRIDGE_REFRESHER_BIND"}
listening = {}
for name, var in binds.items():
    text = (ROOT / name / "src" / "settings.rs").read_text()
    m = re.search(r'r\.(?:string|bind)\(BIND, "0\.0\.0\.0:(\d+)"\)', text)
    if not m or f'"{var}"' not in text:
        problem(f"{name}: cannot find its default listening port in src/settings.rs")
        continue
    svc = services.get(name)
    if not svc:
        problem(f"docker-compose.yml has no service {name}")
        continue
    env = svc.get("environment") or {}
    port = listening[name] = str(env.get(var, f"0.0.0.0:{m.group(1)}")).rsplit(":", 1)[-1]
    test = " ".join(svc.get("healthcheck", {}).get("test", []))
    hm = re.search(r"http://localhost:(\d+)/readyz", test)
    if not hm or hm.group(1) != port:
        problem(f"{name}: its health check does not call /readyz on its port {port}: {test!r}")
    for published in svc.get("ports", []):
        if str(published).split(":")[-1] != port:
            problem(f"{name}: publishes {published} but listens on {port}")
    if svc.get("command") != [name]:
        problem(f"{name}: runs {svc.get('command')}, not its own binary")
dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
for name in ours:
    if f"target/release/{name}" not in dockerfile:
        problem(f"deploy/Dockerfile does not install {name}")

# Mounted files exist (and the configuration files parse).
for name, svc in services.items():
    for vol in svc.get("volumes", []):
        src = str(vol).split(":")[0]
        src = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", src)
        if src.startswith("./") and not (ROOT / src).exists():
            problem(f"{name}: mounts {src}, which does not exist")

# Telemetry: under its profile, the collector's pipeline complete, exporting to a service here.
for name in ("otel-collector", "jaeger", "prometheus"):
    if services.get(name, {}).get("profiles") != ["telemetry"]:
        problem(f"{name} is not (only) under the `telemetry` profile")
collector = yaml.safe_load((ROOT / "deploy" / "otel-collector.yaml").read_text())
for kind, pipeline in collector["service"]["pipelines"].items():
    for part in ("receivers", "processors", "exporters"):
        for used in pipeline.get(part, []):
            if used not in (collector.get(part) or {}):
                problem(f"otel-collector: the {kind} pipeline uses {part[:-1]} {used}, which is not defined")
http = collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
header = (ROOT / "docker-compose.yml").read_text()
if f"OTEL_EXPORTER_OTLP_ENDPOINT=http://otel-collector:{http.rsplit(':', 1)[-1]}" not in header:
    problem("docker-compose.yml's instructions do not name the collector's OTLP/HTTP port")
for ename, exporter in collector["exporters"].items():
    endpoint = (exporter or {}).get("endpoint")
    if endpoint and endpoint.split(":")[0].replace("http://", "") not in services:
        problem(f"otel-collector: exporter {ename} sends to {endpoint}, not a service of docker-compose.yml")
prom = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
scraped = set()
for job in prom["scrape_configs"]:
    for sc in job.get("static_configs", []):
        for target in sc["targets"]:
            host, port = target.rsplit(":", 1)
            scraped.add(host)
            if host not in listening:
                problem(f"prometheus: scrapes {target}, not one of our services")
            elif listening[host] != port:
                problem(f"prometheus: scrapes {target}, but {host} listens on {listening[host]}")
for name in listening:
    if name not in scraped:
        problem(f"prometheus: does not scrape {name}")

# The demo provider is the mock provider, with the mock's credentials.
demo = tomllib.loads((ROOT / "deploy" / "providers.demo.toml").read_text())["providers"]["demo"]
mock = services.get("mock-provider", {})
menv = mock.get("environment") or {}
mport = str(menv.get("MOCK_BIND", "")).rsplit(":", 1)[-1]
for field in ("token_url", "revocation_url", "api_base_url"):
    if not str(demo.get(field, "")).startswith(f"http://mock-provider:{mport}/"):
        problem(f"providers.demo.toml: {field} is not the mock provider's (mock-provider:{mport})")
if not str(demo.get("authorize_url", "")).startswith(f"http://localhost:{mport}/"):
    problem("providers.demo.toml: authorize_url is not the mock provider's as a browser reaches it")
if (demo.get("client_id"), demo.get("client_secret")) != (menv.get("MOCK_CLIENT_ID"), menv.get("MOCK_CLIENT_SECRET")):
    problem("providers.demo.toml: its client credentials are not the mock provider's")
tomllib.loads((ROOT / "deploy" / "providers.example.toml").read_text())

# The build context leaves out the build output and local secrets (`docker compose build` after
# the run command would otherwise send gigabytes of target/ and the dev key).
ignored = (ROOT / ".dockerignore").read_text().split() if (ROOT / ".dockerignore").exists() else []
for must in ("target/", ".env", ".authbridge-dev.key", ".git/"):
    if must not in ignored:
        problem(f".dockerignore does not leave out {must}")

if problems:
    print("check-deploy: the deployment files disagree:", *problems, sep="\n  - ")
    sys.exit(1)
print(f"check-deploy: docker-compose.yml and deploy/ agree ({len(services)} services checked)")
