#!/usr/bin/env bash
# Fuzzes the parsers that take outside input — token responses, the providers file, proxy
# paths, the OAuth callback query, the proxy server's request framing — with cargo-fuzz (libFuzzer + AddressSanitizer), each for a
# bounded time. Usage: scripts/fuzz.sh [seconds per target, default 60] [target …]
# A crash leaves its input in fuzz/artifacts/<target>/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(token_response providers_file proxy_path callback_query request_framing)
fi
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
# cargo-fuzz needs unstable compiler flags; the stable toolchain allows them with this switch.
export RUSTC_BOOTSTRAP=1
cd fuzz
for t in "${targets[@]}"; do
  echo "== fuzzing $t for ${secs}s"
  cargo fuzz run "$t" -- -max_total_time="$secs" -print_final_stats=1 2>&1 | grep -E "^(Done|stat::number_of_executed_units|==.*ERROR|SUMMARY)" || true
  if [ -n "$(ls -A "artifacts/$t" 2>/dev/null)" ]; then
    echo "fuzz target $t found a crash: see fuzz/artifacts/$t" >&2
    exit 1
  fi
done
echo "fuzzing: no crash in ${#targets[@]} targets"
