#!/usr/bin/env bash
# The gateway calling its embedded server's service in process, next to the
# gateway in front of a separate step-server over its TCP pool (--backend),
# in the same run on the same machine: a 100 MiB `curl -T` upload and its
# GET, and 10 KiB PUTs with 32 clients (bench/small_puts.py). Prints a table
# and the load average before and after (the machine may be shared).
#
#   bench/inproc_vs_pool.sh [RUNS]          # default 3 runs of each
#   SIZE=1G bench/inproc_vs_pool.sh 1       # another large-file size
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
SIZE=${SIZE:-100M}
COUNT=${COUNT:-2000}
cargo build --release -q --locked -p step-server -p gateway
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release
WORK=$(mktemp -d "${BENCH_TMP:-/tmp}/inproc.XXXXXX")
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 200); do curl -sf -o /dev/null "$1" && return 0; sleep 0.05; done; echo "no answer from $1" >&2; return 1; }

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
# In process: the gateway alone (it embeds the server; its STEP port is
# served but unused here).
EPORT=$(free_port); ESTEP=$(free_port)
"$BIN/gateway" --bind 127.0.0.1 --port "$EPORT" --step-ip 127.0.0.1 --step-port "$ESTEP" \
  --data-dir "$WORK/embedded" --log warn & PIDS+=($!)
# Pool: the gateway in front of a separate step-server.
SPORT=$(free_port); PPORT=$(free_port)
"$BIN/step-server" --ip 127.0.0.1 --anonymous write --port "$SPORT" --data-dir "$WORK/server" --log warn & PIDS+=($!)
"$BIN/gateway" --bind 127.0.0.1 --port "$PPORT" --backend "127.0.0.1:$SPORT" --log warn & PIDS+=($!)
wait_http "http://127.0.0.1:$EPORT/readyz"
wait_http "http://127.0.0.1:$PPORT/readyz"

f="$WORK/file"
head -c "$SIZE" /dev/urandom > "$f"
bytes=$(stat -c %s "$f")
RESULTS="$WORK/results.tsv"
for run in $(seq "$RUNS"); do
  for mode in in-process pool; do
    port=$EPORT; [ "$mode" = pool ] && port=$PPORT
    url="http://127.0.0.1:$port/files/big-$run"
    t=$(curl -sS -o "$WORK/out" -w '%{time_total}' -T "$f" "$url")
    grep -q '"md5"' "$WORK/out" || { cat "$WORK/out"; exit 1; }
    printf '%s\tPUT %s\t%s\n' "$mode" "$SIZE" "$(python3 -c "print($bytes/$t/1e6)")" >> "$RESULTS"
    t=$(curl -sS -o "$WORK/back" -w '%{time_total}' "$url")
    cmp -s "$f" "$WORK/back" || { echo "MISMATCH ($mode)"; exit 1; }
    printf '%s\tGET %s\t%s\n' "$mode" "$SIZE" "$(python3 -c "print($bytes/$t/1e6)")" >> "$RESULTS"
    rm -f "$WORK/back"
    curl -s -o /dev/null -X DELETE "$url"
    line=$(python3 bench/small_puts.py "http://127.0.0.1:$port" --count "$COUNT" --size 10240 \
      --concurrency 32 --label "$mode-$run")
    grep -q ' errors=0 ' <<<"$line" || { echo "small PUTs failed: $line"; exit 1; }
    rps=$(tr ' ' '\n' <<<"$line" | awk -F= '$1=="req_per_s" {print $2}')
    printf '%s\tPUT 10 KiB c=32\t%s\n' "$mode" "$rps" >> "$RESULTS"
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$RESULTS" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    mode, what, value = line.rstrip("\n").split("\t")
    rows[(what, mode)].append(float(value))
whats = list(dict.fromkeys(w for w, _ in rows))
print(f"{'measure':18} {'unit':6} {'in-process':>11} {'pool':>11} {'ratio':>7}   (median; min-max)")
for w in whats:
    unit = "req/s" if "c=32" in w else "MB/s"
    a, b = rows[(w, "in-process")], rows[(w, "pool")]
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"{w:18} {unit:6} {ma:11.1f} {mb:11.1f} {ma / mb:7.2f}   "
          f"({min(a):.0f}-{max(a):.0f} vs {min(b):.0f}-{max(b):.0f})")
PY
