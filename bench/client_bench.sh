#!/usr/bin/env bash
# step-client next to its peers, side by side in one run: a 1 GiB upload
# against `md5sum` of the same file, a 1 GiB download against dufs GET
# (curl), and a 100 MiB upload against the course's Python client → the
# reference server. With CLIENT_BASELINE (another step-client binary, e.g.
# main's), that binary is measured too, alternating with this tree's in
# every repetition (A B, then B A), as the "now" column.
#
#   bench/client_bench.sh [REPS]                                (default 5)
#   CLIENT_BASELINE=/tmp/main/step-client bench/client_bench.sh 7
#
# Writes $RAW/client.txt (one key=value line per run: wall seconds, MB/s and
# the CPU seconds of the client and of the server) and, through
# bench/client_report.py, $RESULTS/client.md, which BENCHMARKS.md shows.
# Every download's md5 is checked after its clock stops. One more run of
# each path under `perf record` (when perf is installed) says where the CPU
# went (bench/perf_groups.py). Every series runs against the same
# step-server (this tree's), so only the client differs.
#
# Environment: RESULTS, RAW (as bench/run_all.sh), BENCH_TMP, BENCH_QUICK=1
# (100 MiB instead of 1 GiB, 2 repetitions), REF_DIR (see run_all.sh),
# CLIENT_BASELINE.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
QUICK=${BENCH_QUICK:-0}
REPS=${1:-$([[ $QUICK == 1 ]] && echo 2 || echo 5)}
RESULTS=${RESULTS:-$ROOT/bench/results}
RAW=${RAW:-$RESULTS/raw}
REF_DIR=${REF_DIR:-/tmp/ref}
BASELINE=${CLIENT_BASELINE:-}
OUT=$RAW/client.txt
mkdir -p "$RAW"
: >"$OUT"

cargo build --release -q -p step-server -p step-client
BIN=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release
WORK=$(mktemp -d "${BENCH_TMP:-/tmp}/stepclient.XXXXXX")
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
wait_http() { for _ in $(seq 200); do curl -sf -o /dev/null "$1" && return 0; sleep 0.05; done; return 1; }
# CPU seconds a process has used so far (user + system).
cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; }
note() { echo "$*" | tee -a "$RAW/notes.txt" >&2; }
{
  echo "label=machine nproc=$(nproc) load_start=$(cut -d' ' -f1 /proc/loadavg) reps=$REPS baseline=${BASELINE:-none}"
} >>"$OUT"

SIZE=$([[ $QUICK == 1 ]] && echo $((100 << 20)) || echo $((1 << 30)))
SMALL=$((100 << 20))
P=$(free_port)
"$BIN/step-server" --ip 127.0.0.1 --port "$P" --data-dir "$WORK/store" --token-secret "client-$$" --log error \
  >"$WORK/server.log" 2>&1 &
SP=$!; PIDS+=("$SP")
wait_port "$P"
DUFS=$(command -v dufs || echo "$HOME/.cargo/bin/dufs")
DP=
if [[ -x $DUFS ]]; then
  DP=$(free_port); mkdir -p "$WORK/dufs"
  "$DUFS" -A -b 127.0.0.1 -p "$DP" "$WORK/dufs" >/dev/null 2>&1 & DPID=$!; PIDS+=("$DPID")
  wait_http "http://127.0.0.1:$DP/"
else
  note "note: dufs not installed (cargo install dufs --locked): no download peer"
fi
REF=
if [[ -f $REF_DIR/xjtlu/server.py && -f $REF_DIR/xjtlu/client.py ]]; then
  REF=$(free_port); mkdir -p "$WORK/ref"
  (cd "$WORK/ref" && exec python3 "$REF_DIR/xjtlu/server.py" --ip 127.0.0.1 --port "$REF" >"$WORK/ref/server.out" 2>&1) &
  PIDS+=($!)
  wait_port "$REF"
else
  note "note: no reference at $REF_DIR: the 100 MiB row has no peer"
fi

head -c "$SIZE" /dev/urandom >"$WORK/big"
SUM=$(md5sum "$WORK/big" | cut -d' ' -f1)
head -c "$SMALL" "$WORK/big" >"$WORK/small"

# timed LABEL SIZE SERVER_PID -- COMMAND: one line with the wall time, MB/s
# and the CPU seconds of COMMAND and of SERVER_PID while it ran.
timed() {
  local label=$1 size=$2 spid=$3 s0 s1 t0 t1 times; shift 4
  s0=$(cpu_of "$spid")
  t0=$(date +%s.%N)
  # bash's `time` gives the child's CPU without another tool.
  if ! times=$( { TIMEFORMAT='%U %S'; time "$@" >"$WORK/cmd.out" 2>&1; } 2>&1 ); then
    echo "label=$label size=$size error=$(tail -c 150 "$WORK/cmd.out" | tr -s ' \n=' '___')"; return 1
  fi
  t1=$(date +%s.%N)
  s1=$(cpu_of "$spid")
  awk -v l="$label" -v s="$size" -v a="$t0" -v b="$t1" -v c="$times" -v s0="$s0" -v s1="$s1" 'BEGIN {
    split(c, u, " "); printf "label=%s size=%s secs=%.3f mb_per_s=%.1f client_cpu_s=%.2f server_cpu_s=%.2f\n",
      l, s, b - a, s / (b - a) / 1e6, u[1] + u[2], s1 - s0 }'
}
# clients: "this" (this tree) and, with CLIENT_BASELINE, "baseline", in
# alternating order from one repetition to the next.
order() { if [[ -z $BASELINE ]]; then echo this; elif (( $1 % 2 )); then echo this baseline; else echo baseline this; fi; }
bin_of() { if [[ $1 == this ]]; then echo "$BIN/step-client"; else echo "$BASELINE"; fi; }
cli() { "$(bin_of "$1")" --quiet --server-ip 127.0.0.1 --port "$P" --id bench "${@:2}"; }

echo "== client: $REPS repetitions, $(( SIZE >> 20 )) MiB (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
# The download source, on both servers, put there once.
cli this --key dl -f "$WORK/big" >/dev/null
[[ -n $DP ]] && cp "$WORK/big" "$WORK/dufs/dl"
for rep in $(seq "$REPS"); do
  md5sum "$WORK/big" >/dev/null  # page cache
  t0=$(date +%s.%N); md5sum "$WORK/big" >/dev/null; t1=$(date +%s.%N)
  echo "label=md5sum size=$SIZE secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b-a}') mb_per_s=$(awk -v s="$SIZE" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", s/(b-a)/1e6}')" >>"$OUT"
  for who in $(order "$rep"); do
    key=u$rep-$who
    timed "upload|$who" "$SIZE" "$SP" -- cli "$who" --key "$key" -f "$WORK/big" >>"$OUT" || true
    cli this delete "$key" >/dev/null 2>&1 || true
    rm -f "$WORK/out"
    if timed "download|$who" "$SIZE" "$SP" -- cli "$who" download dl -o "$WORK/out" --force >>"$OUT"; then
      [[ $(md5sum "$WORK/out" | cut -d' ' -f1) == "$SUM" ]] || { note "MISMATCH: download|$who"; echo "label=download|$who size=$SIZE error=md5_mismatch" >>"$OUT"; }
    fi
    timed "upload 100 MiB|$who" "$SMALL" "$SP" -- cli "$who" --key "s$key" -f "$WORK/small" >>"$OUT" || true
    cli this delete "s$key" >/dev/null 2>&1 || true
  done
  if [[ -n $DP ]]; then
    rm -f "$WORK/out"
    if timed "download|dufs GET (curl)" "$SIZE" "$DPID" -- curl -sS -f -o "$WORK/out" "http://127.0.0.1:$DP/dl" >>"$OUT"; then
      [[ $(md5sum "$WORK/out" | cut -d' ' -f1) == "$SUM" ]] || note "MISMATCH: dufs GET"
    fi
  fi
done
rm -f "$WORK/out"
if [[ -n $REF ]]; then
  # The study's own client, in process, SAVE to its md5 check.
  python3 bench/py_client_time.py --client "$REF_DIR/xjtlu/client.py" --port "$REF" \
    --label "upload 100 MiB|reference pair (python client → reference)" --sizes "$SMALL" --runs "$REPS" --timeout 120 >>"$OUT" || true
fi

# Where the CPU goes: one more run of each path under perf.
if command -v perf >/dev/null; then
  profile() { # profile PATH SERVER_PID -- COMMAND
    local path=$1 spid=$2 rec t0 t1; shift 3
    perf record -q -e cpu-clock -o "$WORK/p-server.data" -p "$spid" 2>/dev/null & rec=$!
    sleep 0.5
    t0=$(date +%s.%N)
    perf record -q -e cpu-clock -o "$WORK/p-client.data" -- "$@" >/dev/null 2>&1 || true
    t1=$(date +%s.%N)
    kill -INT "$rec"; wait "$rec" 2>/dev/null || true
    for who in client server; do
      python3 bench/perf_groups.py "$WORK/p-$who.data" "profile|$path|$who" "$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b-a}')" >>"$OUT" || true
      rm -f "$WORK/p-$who.data"
    done
  }
  profile upload "$SP" -- "$BIN/step-client" --quiet --server-ip 127.0.0.1 --port "$P" --id bench --key prof -f "$WORK/big"
  profile download "$SP" -- "$BIN/step-client" --quiet --server-ip 127.0.0.1 --port "$P" --id bench download dl -o "$WORK/out" --force
  rm -f "$WORK/out"
  [[ -n $DP ]] && profile "dufs GET" "$DPID" -- curl -sS -f -o "$WORK/out" "http://127.0.0.1:$DP/dl"
else
  note "note: perf missing (apt-get install linux-perf): no client profiles"
fi
echo "label=machine load_end=$(cut -d' ' -f1 /proc/loadavg)" >>"$OUT"
python3 bench/client_report.py "$RESULTS"
