#!/usr/bin/env bash
# A folder as one zip (GET /archive) at two sizes: the gateway's peak
# resident memory must not grow with the archive. The gateway runs in front
# of a separate step-server, so its memory is measured alone (VmHWM, reset
# before each download). Each zip is checked whole (every entry's CRC, by
# Python's zipfile) after it is timed.
#
#   bench/archive_rss.sh [SMALL_MIB] [LARGE_MIB] [FILE_MIB]   default 200 2048 64
set -euo pipefail
cd "$(dirname "$0")/.."
SMALL=${1:-200}; LARGE=${2:-2048}; PER=${3:-64}
cargo build --release -q -p step-server -p gateway
BIN=$PWD/target/release
WORK=$(mktemp -d "${BENCH_TMP:-/tmp}/zipbench.XXXXXX")
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 200); do curl -sf -o /dev/null "$1" && return 0; sleep 0.05; done; echo "no answer from $1" >&2; return 1; }
hwm_kb() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
reset_hwm() { echo 5 > "/proc/$1/clear_refs"; }

SPORT=$(free_port); HPORT=$(free_port)
"$BIN/step-server" --ip 127.0.0.1 --port "$SPORT" --data-dir "$WORK/store" --anonymous write --log warn & SPID=$!; PIDS+=($SPID)
"$BIN/gateway" --bind 127.0.0.1 --port "$HPORT" --backend "127.0.0.1:$SPORT" --log warn & GPID=$!; PIDS+=($GPID)
B="http://127.0.0.1:$HPORT"
wait_http "$B/readyz"

# One file of PER MiB, uploaded under several names (content does not
# matter to the archive's memory; uploading it once per name is the cost).
head -c "$((PER << 20))" /dev/urandom > "$WORK/part"
fill() {
  local folder=$1 mib=$2 n i
  local uploads=()
  n=$(( (mib + PER - 1) / PER ))
  for i in $(seq "$n"); do
    curl -sS -f -o /dev/null -T "$WORK/part" "$B/files/$folder/part-$i.bin" & uploads+=($!)
    if [ ${#uploads[@]} -eq 4 ]; then wait "${uploads[@]}"; uploads=(); fi
  done
  # Only the uploads: a bare wait would wait for the servers too.
  if [ ${#uploads[@]} -gt 0 ]; then wait "${uploads[@]}"; fi
}
fill small "$SMALL"
fill large "$LARGE"

printf 'folder\tMiB\tseconds\tMiB/s\tgateway peak RSS (MiB)\tgateway RSS before (MiB)\n'
for folder in small large; do
  before=$(rss_kb "$GPID")
  reset_hwm "$GPID"
  t=$(curl -sS -f -o "$WORK/$folder.zip" -w '%{time_total}' "$B/archive?prefix=$folder/")
  peak=$(hwm_kb "$GPID")
  bytes=$(stat -c %s "$WORK/$folder.zip")
  python3 - "$WORK/$folder.zip" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    bad = z.testzip()
    assert bad is None, f"corrupt entry {bad}"
EOF
  rm -f "$WORK/$folder.zip"
  python3 -c "import sys; b,t,p,r=int(sys.argv[1]),float(sys.argv[2]),int(sys.argv[3]),int(sys.argv[4]); print(f'{sys.argv[5]}\t{b/2**20:.0f}\t{t:.1f}\t{b/2**20/t:.0f}\t{p/1024:.1f}\t{r/1024:.1f}')" \
    "$bytes" "$t" "$peak" "$before" "$folder"
done
