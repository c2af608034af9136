#!/usr/bin/env bash
# CPU profiles behind BENCHMARKS.md (perf, call graphs), written to
# bench/results/profiles/*.txt:
#   native-1GiB-server.txt     step-server during a 1 GiB upload (step-bench, 1 conn, w16, 1 MiB)
#   gateway-1GiB-gateway.txt   gateway during a 1 GiB curl -T
#   gateway-1GiB-server.txt    step-server behind it, same upload
#   small-10KiB-server.txt     step-server under 10 KiB PUTs through the gateway (oha -c 32)
#   small-10KiB-gateway.txt    gateway, same load
#   small-10KiB-offcpu.txt     where step-server's threads wait (sched switches), same load
#
#   bench/profile.sh          (needs perf: apt-get install linux-perf; oha for the small-file one)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/bench/results/profiles}
mkdir -p "$OUT"
cargo build --release -q -p step-server -p step-bench -p gateway
BIN=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release
OHA=$(command -v oha || echo "$HOME/.cargo/bin/oha")
WORK=$(mktemp -d "${BENCH_TMP:-/tmp}/stepprof.XXXXXX")
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 200); do curl -sf -o /dev/null "$1" && return 0; sleep 0.05; done; return 1; }
wait_port() { for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

P=$(free_port); H=$(free_port)
"$BIN/step-server" --ip 127.0.0.1 --port "$P" --data-dir "$WORK/store" --token-secret prof --log error & SP=$!; PIDS+=("$SP")
"$BIN/gateway" --bind 127.0.0.1 --port "$H" --backend "127.0.0.1:$P" --log error & GP=$!; PIDS+=("$GP")
wait_port "$P"; wait_http "http://127.0.0.1:$H/readyz"

# record NAME PID... -- command: perf on each PID while the command runs.
record() {
  local name=$1 rec=() i=0; shift
  local pids=()
  while [[ $1 != -- ]]; do pids+=("$1"); shift; done; shift
  for p in "${pids[@]}"; do
    perf record -q -g -o "$WORK/$name-$i.data" -p "$p" 2>/dev/null & rec+=($!); i=$((i + 1))
  done
  sleep 0.3
  "$@" >/dev/null || true
  for r in "${rec[@]}"; do kill -INT "$r"; wait "$r" 2>/dev/null || true; done
}
report() { # report DATA OUTFILE TITLE
  {
    echo "# $3"
    echo "# perf report --no-children --sort symbol (self time), top entries"
    perf report -i "$1" --no-children --sort symbol --stdio -g none 2>/dev/null | grep -E '^ +[0-9.]+%' | head -25 || true
  } >"$2"
}

record native "$SP" -- "$BIN/step-bench" --addr "127.0.0.1:$P" --size $((1 << 30)) --window 16 --block-size 1048576
report "$WORK/native-0.data" "$OUT/native-1GiB-server.txt" "step-server, 1 GiB native upload (1 connection, window 16, 1 MiB blocks)"

head -c $((1 << 30)) /dev/urandom >"$WORK/f"
record gw "$GP" "$SP" -- curl -sS -o /dev/null -T "$WORK/f" "http://127.0.0.1:$H/files/prof-1g"
report "$WORK/gw-0.data" "$OUT/gateway-1GiB-gateway.txt" "gateway, 1 GiB curl -T"
report "$WORK/gw-1.data" "$OUT/gateway-1GiB-server.txt" "step-server behind the gateway, 1 GiB curl -T"
rm -f "$WORK/f"

if [[ -x $OHA ]]; then
  head -c 10240 /dev/urandom >"$WORK/10k"
  load() { "$OHA" -z 5s -c 32 -m PUT -D "$WORK/10k" --rand-regex-url --no-tui --output-format json "http://127.0.0.1:$H/files/p$1-[a-z0-9]{24}"; }
  record small "$SP" "$GP" -- load a
  report "$WORK/small-0.data" "$OUT/small-10KiB-server.txt" "step-server, 10 KiB PUTs through the gateway, 32 concurrent"
  report "$WORK/small-1.data" "$OUT/small-10KiB-gateway.txt" "gateway, 10 KiB PUTs, 32 concurrent"
  # Off-CPU: which calls the server's threads block in.
  perf record -q -e sched:sched_switch -g -o "$WORK/off.data" -p "$SP" 2>/dev/null & R=$!
  sleep 0.3; load b >/dev/null || true; kill -INT "$R"; wait "$R" 2>/dev/null || true
  {
    echo "# step-server off-CPU: context switches by the syscall that blocked (10 KiB PUTs, 32 concurrent)"
    perf script -i "$WORK/off.data" 2>/dev/null | awk '/^[^ \t]/ {inblk=1; first=""; next} inblk && /^[ \t]+[0-9a-f]+ / && first=="" && $2 !~ /^(schedule|__schedule|__traceiter|_raw|preempt|schedule_)/ {first=$2} /^$/ {if (first!="") c[first]++; inblk=0} END {for (k in c) print c[k], k}' | sort -rn | head -20 || true
  } >"$OUT/small-10KiB-offcpu.txt"
fi
echo "profiles in $OUT"
