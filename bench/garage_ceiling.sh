#!/usr/bin/env bash
# Garage's own ceiling on this machine: what a store on Garage can at best
# reach, measured with the S3 client the server's store uses (object_store,
# bench/src/bin/s3_ceiling.rs) against a one-node Garage on loopback,
# configured as the tests configure it (tests/src/garage.rs).
#
#   bench/garage_ceiling.sh [RUNS]      # default 3 runs of each measurement
#   BENCH_QUICK=1 bench/garage_ceiling.sh   # 100 MiB instead of 1 GiB, fewer PUTs
#   GARAGE_SECTIONS=small bench/garage_ceiling.sh   # only the small objects ("big small store")
#
# Series (one Garage node each, fresh directory):
#   garage          stock configuration (Garage's defaults: no fsync of data
#                   or metadata, zstd level 1, 1 MiB blocks, lmdb)
#   garage-fsync    data_fsync and metadata_fsync on (durable like the disk
#                   store, which fsyncs): large PUT only
#   garage-nodelay  stock, with TCP_NODELAY forced on Garage's accepted
#                   sockets (LD_PRELOAD bench/garage_nodelay.c): small objects
#                   only; the difference to `garage` is what Nagle costs
# Measured: a multipart PUT of 1 GiB (8 MiB parts, 8 in flight), its GET
# (one stream, and 8 ranged GETs in flight), 10 KiB PUTs one at a time and
# 32 in flight, then GETs and HEADs of them the same way (latency
# percentiles); and ("store") the step-server's native 100 MiB uploads with
# its storage on Garage next to the same on local disk and Garage's own
# 100 MiB multipart PUT ($RESULTS/raw/store_on_s3.txt). Lines key=value, appended to
# $RESULTS/raw/garage_ceiling.txt (RESULTS defaults to bench/results).
# Needs garage (tests/garage/install.sh), python3 (free ports), cc for the
# nodelay shim (that series is skipped with a note without it).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUNS=${1:-3}
QUICK=${BENCH_QUICK:-0}
RESULTS=${RESULTS:-$ROOT/bench/results}
RAW=$RESULTS/raw
OUT=$RAW/garage_ceiling.txt
mkdir -p "$RAW"
SECTIONS=" ${GARAGE_SECTIONS:-big small store} "
want() { [[ $SECTIONS == *" $1 "* ]]; }
if [[ $QUICK == 1 ]]; then BIG=$((100 << 20)); SEQ=50; PAR=500; else BIG=$((1 << 30)); SEQ=200; PAR=2000; fi

note() { echo "$*" | tee -a "$RAW/notes.txt" >&2; }
GARAGE=${GARAGE_BIN:-$(command -v garage || echo "${CARGO_HOME:-$HOME/.cargo}/bin/garage")}
if [[ ! -x $GARAGE ]]; then
  note "garage_ceiling: no garage binary (tests/garage/install.sh installs it); skipped"
  exit 0
fi

echo "== building s3_ceiling (release)" >&2
cargo build --release -q -p step-bench --bin s3_ceiling
TARGET=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
CEILING=$TARGET/release/s3_ceiling
WORK=$(mktemp -d "${BENCH_TMP:-/tmp}/garagebench.XXXXXX")
G_PID=
cleanup() {
  if [[ -n $G_PID ]]; then kill "$G_PID" 2>/dev/null || true; wait "$G_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

source bench/garage.sh

SHIM=
if command -v cc >/dev/null 2>&1 && cc -shared -fPIC -O2 -o "$WORK/garage_nodelay.so" bench/garage_nodelay.c -ldl; then
  SHIM=$WORK/garage_nodelay.so
else
  note "garage_ceiling: no C compiler for bench/garage_nodelay.c; the garage-nodelay series is skipped"
fi

record() { tee -a "$OUT"; }
{
  echo "# garage_ceiling $(date -u +%FT%TZ) $("$GARAGE" --version | head -1) cores=$(nproc) runs=$RUNS quick=$QUICK load=$(cut -d' ' -f1-3 /proc/loadavg | tr ' ' ,)"
} | record

echo "== garage: stock" >&2
start_garage garage false
if want big; then
  "$CEILING" --mode big --label garage --size "$BIG" --part-size $((8 << 20)) --concurrency 8 --runs "$RUNS" | record
fi
if want small; then
  "$CEILING" --mode small --label garage --size 10240 --count "$SEQ" --concurrency 1 --runs "$RUNS" | record
  "$CEILING" --mode small --label garage --size 10240 --count "$PAR" --concurrency 32 --runs "$RUNS" | record
fi
stop_garage

if want store; then
  # The step-server itself with its storage on this Garage, next to the same
  # server on local disk and to Garage's own multipart PUT of the same size,
  # in this run (native uploads with step-bench, 100 MiB).
  echo "== step-server on Garage vs on disk (100 MiB native uploads)" >&2
  cargo build --release -q -p step-server -p step-bench -p gateway
  STORE_OUT=$RAW/store_on_s3.txt
  echo "# store_on_s3 $(date -u +%FT%TZ) runs=$RUNS load=$(cut -d' ' -f1-3 /proc/loadavg | tr ' ' ,)" | tee -a "$STORE_OUT"
  start_garage garage-store false
  for where in disk s3; do
    port=$(free_port)
    if [[ $where == s3 ]]; then storage=s3://bench/step; else storage=disk; fi
    "$TARGET/release/step-server" --ip 127.0.0.1 --port "$port" --data-dir "$WORK/store-$where" \
      --storage "$storage" --log warn &
    S_PID=$!
    wait_port "$port" "$S_PID"
    for blocks in 20480 1048576; do
      "$TARGET/release/step-bench" --addr "127.0.0.1:$port" --size $((100 << 20)) --runs "$RUNS" \
        --label "step-server-$where/window16-bs$blocks" --window 16 --block-size "$blocks" | tee -a "$STORE_OUT"
    done
    if [[ $QUICK != 1 ]]; then
      "$TARGET/release/step-bench" --addr "127.0.0.1:$port" --size $((1 << 30)) --runs 1 \
        --label "step-server-$where/1GiB-window16-bs1048576" --window 16 --block-size 1048576 | tee -a "$STORE_OUT"
    fi
    kill "$S_PID"; wait "$S_PID" 2>/dev/null || true
    # 10 KiB PUTs through the gateway (its embedded server on this storage).
    hport=$(free_port); sport=$(free_port)
    "$TARGET/release/gateway" --bind 127.0.0.1 --port "$hport" --step-ip 127.0.0.1 --step-port "$sport" \
      --data-dir "$WORK/gw-$where" --storage "${storage/step/gw}" --log warn &
    S_PID=$!
    wait_port "$hport" "$S_PID"
    for _ in $(seq "$RUNS"); do
      python3 bench/small_puts.py "http://127.0.0.1:$hport" --count $((QUICK == 1 ? 300 : 2000)) \
        --size 10240 --concurrency 32 --label "gateway-$where-$RANDOM" | tee -a "$STORE_OUT"
    done
    kill "$S_PID"; wait "$S_PID" 2>/dev/null || true
  done
  "$CEILING" --mode big --label garage-100MiB --size $((100 << 20)) --part-size $((8 << 20)) --concurrency 8 --runs "$RUNS" | tee -a "$STORE_OUT"
  stop_garage
fi

if want big; then
  echo "== garage-fsync: large multipart PUT" >&2
  start_garage garage-fsync true
  "$CEILING" --mode big --label garage-fsync --size "$BIG" --part-size $((8 << 20)) --concurrency 8 --runs "$RUNS" | record
  stop_garage
fi

if [[ -n $SHIM ]] && want small; then
  echo "== garage-nodelay: 10 KiB PUTs and GETs with TCP_NODELAY on Garage's sockets" >&2
  start_garage garage-nodelay false "$SHIM"
  "$CEILING" --mode small --label garage-nodelay --size 10240 --count "$SEQ" --concurrency 1 --runs "$RUNS" | record
  "$CEILING" --mode small --label garage-nodelay --size 10240 --count "$PAR" --concurrency 32 --runs "$RUNS" | record
  stop_garage
fi

# Medians of this run's lines (after its "#" header), as a Markdown table.
python3 - "$OUT" >"$RESULTS/garage_ceiling.md" <<'PY'
import statistics, sys
lines = open(sys.argv[1]).read().splitlines()
start = max(i for i, l in enumerate(lines) if l.startswith("#"))
header, rows = lines[start], {}
for line in lines[start + 1:]:
    kv = dict(f.split("=", 1) for f in line.split() if "=" in f)
    key = (kv["label"], kv["op"], int(kv["size"]), int(kv.get("concurrency", 1)))
    rows.setdefault(key, []).append(kv)
print(f"Garage's ceiling (bench/garage_ceiling.sh), medians of runs. {header[2:]}\n")
print("| series | op | size | in flight | MB/s | ops/s | p50 ms | p99 ms |")
print("|---|---|---|---|---|---|---|---|")
med = lambda runs, k: f"{statistics.median(float(r[k]) for r in runs):.1f}" if k in runs[0] else ""
med2 = lambda runs, k: f"{statistics.median(float(r[k]) for r in runs):.2f}" if k in runs[0] else ""
for (label, op, size, conc), runs in rows.items():
    size_text = f"{size >> 20} MiB" if size >= 1 << 20 else f"{size >> 10} KiB"
    print(f"| {label} | {op} | {size_text} | {conc} | {med(runs, 'mb_per_s')} | {med(runs, 'ops_per_s')} "
          f"| {med2(runs, 'p50_ms')} | {med2(runs, 'p99_ms')} |")
PY
cat "$RESULTS/garage_ceiling.md" >&2
