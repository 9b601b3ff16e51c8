#!/usr/bin/env bash
# Fuzzes the parsers that take outside input with cargo-fuzz (libFuzzer + AddressSanitizer),
# each for a bounded time: token responses, the providers file, proxy paths, the OAuth callback
# query, the proxy server's request framing, and two differential targets that hold the proxy's
# own HTTP/1.1 code to hyper's on the same bytes (request_differential: the request parser and
# framing rules; answer_differential: the client's answer parser and body decoder, chunked
# coding included). Seeds are in fuzz/seeds/<target>/ where a target has them.
# Usage: scripts/fuzz.sh [seconds per target, default 60] [target …]
#   e.g. scripts/fuzz.sh 600 request_differential answer_differential
# A crash or a disagreement leaves its input in fuzz/artifacts/<target>/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(token_response providers_file proxy_path callback_query request_framing request_differential answer_differential)
fi
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
# cargo-fuzz needs unstable compiler flags; the stable toolchain allows them with this switch.
export RUSTC_BOOTSTRAP=1
cd fuzz
for t in "${targets[@]}"; do
  echo "== fuzzing $t for ${secs}s"
  # New inputs go to the first directory (fuzz/corpus/, not kept); the seeds are read only.
  mkdir -p "corpus/$t"
  seeds=("corpus/$t")
  [ -d "seeds/$t" ] && seeds+=("seeds/$t")
  cargo fuzz run "$t" "${seeds[@]}" -- -max_total_time="$secs" -print_final_stats=1 2>&1 \
    | grep -E "^(Done|stat::number_of_executed_units|==.*ERROR|SUMMARY)|panicked|disagree|refuse" || true
  if [ -n "$(ls -A "artifacts/$t" 2>/dev/null)" ]; then
    echo "fuzz target $t found a crash: see fuzz/artifacts/$t" >&2
    exit 1
  fi
done
echo "fuzzing: no crash in ${#targets[@]} targets"
