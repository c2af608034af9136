#!/usr/bin/env bash
# Large uploads through the gateway (curl -T and curl -F) next to dufs PUT of
# the same files, in the same run; peak resident memory of the gateway and of
# the step-server behind it (separate processes, so each is measured alone).
#
#   bench/gateway_upload.sh [RUNS] [SIZES...]      e.g. bench/gateway_upload.sh 3 100M 1G
# dufs: `cargo install dufs --locked` (skipped with a note when absent).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}; shift || true
SIZES=("${@:-100M}")
[ ${#SIZES[@]} -eq 0 ] && SIZES=(100M 1G)
cargo build --release -q -p step-server -p gateway
BIN=$PWD/target/release
WORK=$(mktemp -d "${BENCH_TMP:-/tmp}/gwbench.XXXXXX")
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 200); do curl -sf -o /dev/null "$1" && return 0; sleep 0.05; done; echo "no answer from $1" >&2; return 1; }
hwm_kb() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
reset_hwm() { echo 5 > "/proc/$1/clear_refs"; }

SPORT=$(free_port); HPORT=$(free_port)
"$BIN/step-server" --ip 127.0.0.1 --anonymous write --port "$SPORT" --data-dir "$WORK/store" --log warn & SPID=$!; PIDS+=($SPID)
"$BIN/gateway" --bind 127.0.0.1 --port "$HPORT" --backend "127.0.0.1:$SPORT" --log warn & GPID=$!; PIDS+=($GPID)
wait_http "http://127.0.0.1:$HPORT/readyz"
DUFS=$(command -v dufs || echo "$HOME/.cargo/bin/dufs")
if [ -x "$DUFS" ]; then
  DPORT=$(free_port); mkdir -p "$WORK/dufs"
  "$DUFS" -A -b 127.0.0.1 -p "$DPORT" "$WORK/dufs" >/dev/null 2>&1 & DPID=$!; PIDS+=($DPID)
  wait_http "http://127.0.0.1:$DPORT/"
else
  echo "note: dufs not installed; its column is empty" >&2
fi

RESULTS="$WORK/results.tsv"
for size in "${SIZES[@]}"; do
  f="$WORK/file-$size"
  head -c "$size" /dev/urandom > "$f"
  bytes=$(stat -c %s "$f")
  for run in $(seq "$RUNS"); do
    key="b-$size-$run"
    reset_hwm "$GPID"; reset_hwm "$SPID"
    t=$(curl -sS -o "$WORK/out" -w '%{time_total}' -T "$f" "http://127.0.0.1:$HPORT/files/$key-T")
    grep -q '"md5"' "$WORK/out" || { cat "$WORK/out"; exit 1; }
    printf 'gateway curl -T\t%s\t%s\t%s\t%s\t%s\n' "$size" "$bytes" "$t" "$(hwm_kb "$GPID")" "$(hwm_kb "$SPID")" >> "$RESULTS"
    reset_hwm "$GPID"; reset_hwm "$SPID"
    t=$(curl -sS -o "$WORK/out" -w '%{time_total}' -F "file=@$f;filename=$key-F" "http://127.0.0.1:$HPORT/upload")
    grep -q '"md5"' "$WORK/out" || { cat "$WORK/out"; exit 1; }
    printf 'gateway curl -F\t%s\t%s\t%s\t%s\t%s\n' "$size" "$bytes" "$t" "$(hwm_kb "$GPID")" "$(hwm_kb "$SPID")" >> "$RESULTS"
    if [ -n "${DPID:-}" ]; then
      reset_hwm "$DPID"
      t=$(curl -sS -o /dev/null -w '%{time_total}' -T "$f" "http://127.0.0.1:$DPORT/$key")
      printf 'dufs PUT\t%s\t%s\t%s\t%s\t-\n' "$size" "$bytes" "$t" "$(hwm_kb "$DPID")" >> "$RESULTS"
    fi
    curl -s -o /dev/null -X DELETE "http://127.0.0.1:$HPORT/files/$key-T"
    curl -s -o /dev/null -X DELETE "http://127.0.0.1:$HPORT/files/$key-F"
    rm -f "$WORK/dufs/$key"
  done
  # Check one stored copy byte for byte.
  curl -sS -T "$f" -o /dev/null "http://127.0.0.1:$HPORT/files/verify-$size"
  curl -sS -o "$WORK/back" "http://127.0.0.1:$HPORT/files/verify-$size"
  cmp -s "$f" "$WORK/back" && echo "verified: $size byte-identical through the gateway" || { echo "MISMATCH for $size"; exit 1; }
  rm -f "$f" "$WORK/back"
done
python3 - "$RESULTS" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    tool, size, nbytes, secs, rss, srss = line.rstrip("\n").split("\t")
    rows[(size, tool)].append((int(nbytes) / float(secs) / 1e6, int(rss) / 1024, srss))
print(f"{'size':6} {'tool':16} {'MB/s median':>12} {'min':>8} {'max':>8} {'peak RSS MB':>12} {'server RSS MB':>14}")
med = {}
for (size, tool), v in rows.items():
    mbs = [x[0] for x in v]
    med[(size, tool)] = statistics.median(mbs)
    srv = max((int(x[2]) for x in v if x[2] != "-"), default=0) / 1024
    print(f"{size:6} {tool:16} {statistics.median(mbs):12.1f} {min(mbs):8.1f} {max(mbs):8.1f} {max(x[1] for x in v):12.1f} {srv:14.1f}")
for (size, tool), m in med.items():
    d = med.get((size, "dufs PUT"))
    if d and tool != "dufs PUT":
        print(f"ratio {size} {tool} / dufs PUT = {m / d:.2f}x")
PY
