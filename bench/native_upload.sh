#!/usr/bin/env bash
# Native upload throughput: StepClient -> step-server on loopback, stop-and-wait
# versus pipelined versus larger blocks and several connections; and, when
# REF_SERVER points at the reference Python server.py (run locally, never
# committed), the same stop-and-wait client against it, in the same run.
#
#   bench/native_upload.sh [SIZE_BYTES] [RUNS]
#   REF_SERVER=/path/to/server.py bench/native_upload.sh $((100<<20)) 3
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:-$((100 << 20))}
RUNS=${2:-3}
cargo build --release -q -p step-server -p step-bench
BIN=target/release
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

PORT=$(free_port)
"$BIN/step-server" --ip 127.0.0.1 --port "$PORT" --data-dir "$WORK/store" --log warn &
PIDS+=($!)
wait_port "$PORT"

run() { "$BIN/step-bench" --addr "127.0.0.1:$1" --size "$SIZE" --runs "$RUNS" --label "$2" "${@:3}"; }
{
  run "$PORT" step-server/stop-and-wait --window 1
  run "$PORT" step-server/window16 --window 16
  run "$PORT" step-server/window16-1MiB --window 16 --block-size 1048576
  run "$PORT" step-server/4conn-w8-1MiB --window 8 --connections 4 --block-size 1048576
  if [ -n "${REF_SERVER:-}" ]; then
    RPORT=$(free_port)
    mkdir -p "$WORK/ref"
    (cd "$WORK/ref" && exec python3 "$REF_SERVER" --ip 127.0.0.1 --port "$RPORT" >"$WORK/ref/out" 2>&1) &
    PIDS+=($!)
    wait_port "$RPORT"
    run "$RPORT" reference/stop-and-wait --window 1
  fi
} | tee "$WORK/results.txt"
# Median MB/s per label.
python3 - "$WORK/results.txt" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
errors = collections.Counter()
for line in open(sys.argv[1]):
    kv = dict(p.split("=", 1) for p in line.split() if "=" in p)
    if "mb_per_s" in kv:
        rows[kv["label"]].append(float(kv["mb_per_s"]))
    else:
        errors[kv.get("label", "?")] += 1
print(f"{'label':32} {'median MB/s':>12} {'min':>8} {'max':>8}")
for label, v in rows.items():
    print(f"{label:32} {statistics.median(v):12.1f} {min(v):8.1f} {max(v):8.1f}")
for label, n in errors.items():
    print(f"{label:32} {n} run(s) failed (see the lines above)")
base = rows.get("reference/stop-and-wait")
if base:
    for label, v in rows.items():
        print(f"ratio {label} / reference = {statistics.median(v) / statistics.median(base):.2f}x")
PY
