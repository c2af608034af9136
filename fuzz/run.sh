#!/usr/bin/env bash
# Run every cargo-fuzz target (or the ones named) for SECONDS each, one after
# the other (libFuzzer -jobs=1: one fuzzing process, leaving a core free), and
# print one summary line per target: executions, corpus size, crashes.
#
#   fuzz/run.sh [SECONDS] [TARGET...]        default: 60 s, all targets
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`).
# Corpora grow in fuzz/corpus/<target> (seeded from fuzz/seeds/<target>);
# crashes land in fuzz/artifacts/<target>/ — turn each into a regression test
# (see `fuzz_regressions` in step-core/src/codec.rs) before deleting it.
set -euo pipefail
cd "$(dirname "$0")"
SECS=${1:-60}
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then TARGETS=(decoder request service); fi

cargo +nightly fuzz build -O >/dev/null 2>&1
status=0
for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  log=$(mktemp)
  # The service target keeps its store in a temp dir named after its pid.
  set +e
  cargo +nightly fuzz run -O "$t" "corpus/$t" "seeds/$t" -- \
    -jobs=1 -workers=1 -max_total_time="$SECS" -max_len=8192 -timeout=10 \
    -dict=dict/step.dict -artifact_prefix="artifacts/$t/" -print_final_stats=1 \
    >"$log" 2>&1
  rc=$?
  set -e
  # -jobs=1 sends the fuzzer's output to fuzz-0.log.
  [ -f fuzz-0.log ] && cat fuzz-0.log >>"$log" && rm -f fuzz-0.log
  rm -rf "${TMPDIR:-/tmp}"/step-fuzz-service-*
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo '?')
  crashes=$(find "artifacts/$t" -type f | wc -l)
  corpus=$(find "corpus/$t" -type f | wc -l)
  echo "fuzz $t: ${SECS}s, executions=$execs, corpus=$corpus, artifacts=$crashes, exit=$rc"
  if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ]; then
    status=1
    grep -E 'panicked|ERROR|SUMMARY' "$log" | head -20 || true
  fi
  cp "$log" "artifacts/$t.last.log"
  rm -f "$log"
done
exit $status
