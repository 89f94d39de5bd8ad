#!/usr/bin/env bash
# The long fuzz run docs/reliability.md reports: each target for RUNS executions (default 10 million), starting from
# its seeds, inputs on a tmpfs, two targets at a time. Prints one line per target and writes them as JSON lines.
#   tests/fuzz/long_run.sh [BUILD_DIR (build-sanitize)] [RUNS] [TARGET...]
# A finding (crash, leak, sanitizer report, timeout, out-of-memory) leaves fuzz_<target>-crash-* in BUILD_DIR/fuzz-long.
set -euo pipefail
build=$(realpath "${1:-build-sanitize}")
runs=${2:-10000000}
shift $(( $# > 2 ? 2 : $# ))
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(safetensors index torch_bin pickle)
src=$(cd "$(dirname "$0")" && pwd)
out=$build/fuzz-long
mkdir -p "$out"
one() {
  local kind=$1 start end status=0
  mkdir -p "$out/corpus-$kind"
  start=$(date +%s)
  local scratch
  scratch=$(mktemp -d /dev/shm/fuzz-long-XXXXXX)  # a tmpfs: about three times the executions of a disk
  TMPDIR=$scratch ASAN_OPTIONS=detect_leaks=1 "$build/tests/fuzz/fuzz_$kind" -runs="$runs" -max_len=65536 -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$out/fuzz_$kind-" "$out/corpus-$kind" \
    "$src/corpus/$kind" > "$out/$kind.log" 2>&1 || status=$?
  end=$(date +%s)
  rm -rf "$scratch"  # a finding ends the fuzzer without its own cleanup
  local execs cov findings
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out/$kind.log")
  cov=$(grep -o 'cov: [0-9]*' "$out/$kind.log" | tail -1 | cut -d' ' -f2)
  findings=$(find "$out" -name "fuzz_$kind-*" | wc -l)
  printf '{"target": "fuzz_%s", "executions": %s, "seconds": %s, "coverage": %s, "corpus": %s, "findings": %s, "exit": %s}\n' \
    "$kind" "${execs:-0}" $((end - start)) "${cov:-0}" "$(ls "$out/corpus-$kind" | wc -l)" "$findings" "$status" \
    | tee -a "$out/results.jsonl"
}
for kind in "${targets[@]}"; do
  one "$kind" &
  while [ "$(jobs -rp | wc -l)" -ge 2 ]; do sleep 5; done
done
wait
