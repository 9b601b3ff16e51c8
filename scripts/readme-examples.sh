#!/usr/bin/env bash
# The README's curl examples, run in the order a reader meets them, against a running system:
# every ```sh block that calls it with "$KEY". The addresses and the key are this run's;
# `<connect_url>` is the one the session example returned. Any answer of 400 or more fails the
# run and shows the line. Part of the test command.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh >/dev/null
cargo build --locked -q -p devstack
. scripts/dev-system.sh readme 28080 28081 28082 29090

work=$(mktemp -d)
trap 'dev_cleanup; rm -rf "$work"' EXIT
last="$work/last"
script="$work/examples.sh"
python3 - "$script" <<'PY'
import re, sys
readme = open("README.md").read()
blocks = re.findall(r"```sh\n(.*?)```", readme, re.S)
runnable = [b for b in blocks if '"$KEY"' in b]
with open(sys.argv[1], "w") as out:
    for b in runnable:
        b = b.replace("url='<connect_url>'", 'url=$(connect_url)')
        out.write(b + "\n")
print(f"readme-examples: {len(runnable)} blocks", file=sys.stderr)
PY
sed -i -e "s#http://127.0.0.1:8080#$GW#g" -e "s#http://127.0.0.1:8081#$PX#g" \
    -e "s#dev-api-key-change-me#$AUTHBRIDGE_DEV_API_KEY#g" "$script"
# Every answer is kept (the session's connect_url is read from it) and must not be an error.
curl() { command curl --fail-with-body "$@" | tee "$last"; }
connect_url() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["connect_url"])' "$last"; }
export -f curl connect_url
export last
cd "$work"
if bash -euo pipefail -x "$script" > "$work/out" 2>&1; then
  echo "readme-examples: every example ran"
else
  tail -25 "$work/out"
  echo "readme-examples: an example failed (above)" >&2
  exit 1
fi
