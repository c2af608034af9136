#!/usr/bin/env bash
# CPU profiles behind BENCHMARKS.md: where md5, copies and zeroing go on each
# path, per process. perf samples cpu-clock (hardware counters are not
# available in this VM). Writes to $OUT (bench/results/profiles):
#   <path>-<process>.txt   top symbols by self time, per process and path
#   small-10KiB-offcpu.txt where step-server's threads wait under 10 KiB PUTs
# and to $RAW/profile.txt one key=value line per process and path
# (bench/perf_groups.py: md5 / copies / zeroing / kernel / rest, CPU seconds),
# which bench/report.py turns into the profile table of BENCHMARKS.md.
#
# Paths: native upload (step-client command → step-server), gateway upload
# (curl -T → gateway → step-server), gateway download (curl GET), native
# download (step-client download), 10 KiB PUTs through the gateway (oha -c 32).
#
#   bench/profile.sh                          (run by bench/run_all.sh, section profile)
#   PROFILE_SIZE=268435456 bench/profile.sh   smaller transfers (default 1 GiB)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/bench/results/profiles}
RAW=${RAW:-$PWD/bench/results/raw}
SIZE=${PROFILE_SIZE:-$((1 << 30))}
mkdir -p "$OUT" "$RAW"
rm -f "$OUT"/*.txt
echo "label=profile size=$SIZE" >"$RAW/profile.txt"
cargo build --release -q -p step-server -p step-bench -p gateway -p step-client
BIN=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release
OHA=$(command -v oha || echo "$HOME/.cargo/bin/oha")
WORK=$(mktemp -d "${BENCH_TMP:-/tmp}/stepprof.XXXXXX")
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 200); do curl -sf -o /dev/null "$1" && return 0; sleep 0.05; done; return 1; }
wait_port() { for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

P=$(free_port); H=$(free_port)
"$BIN/step-server" --ip 127.0.0.1 --anonymous write --port "$P" --data-dir "$WORK/store" --token-secret prof --log error & SP=$!; PIDS+=("$SP")
"$BIN/gateway" --bind 127.0.0.1 --port "$H" --backend "127.0.0.1:$P" --spool-dir "$WORK" --log error & GP=$!; PIDS+=("$GP")
wait_port "$P"; wait_http "http://127.0.0.1:$H/readyz"

# record PATH [NAME=PID]... -- COMMAND: perf on each named running process
# and on COMMAND itself (as process "client") while COMMAND runs; then one
# top-symbols file and one profile.txt line per process.
record() {
  local path=$1 rec=() names=() t0 t1 n; shift
  while [[ $1 != -- ]]; do
    names+=("${1%%=*}")
    perf record -q -e cpu-clock -o "$WORK/$path-${1%%=*}.data" -p "${1#*=}" 2>/dev/null & rec+=($!)
    shift
  done
  shift
  # perf attaches asynchronously; give it a moment before the work starts.
  sleep 0.5
  t0=$(date +%s.%N)
  perf record -q -e cpu-clock -o "$WORK/$path-client.data" -- "$@" >/dev/null 2>"$WORK/cmd.err" ||
    echo "profile $path: command failed: $(tail -c 200 "$WORK/cmd.err")" >&2
  t1=$(date +%s.%N)
  for r in "${rec[@]}"; do kill -INT "$r"; wait "$r" 2>/dev/null || true; done
  for n in client "${names[@]}"; do
    local proc=$n
    [[ $n == client ]] && proc=$(basename "$1")
    python3 bench/perf_groups.py "$WORK/$path-$n.data" "$path|$proc" "$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b-a}')" >>"$RAW/profile.txt" || true
    {
      echo "# $path: $proc (perf record -e cpu-clock; self time, top entries)"
      perf report -i "$WORK/$path-$n.data" --no-children --sort dso,symbol --stdio 2>/dev/null | grep -E '^ +[0-9.]+%' | head -25 || true
    } >"$OUT/$path-$proc.txt"
    rm -f "$WORK/$path-$n.data"
  done
}

head -c "$SIZE" /dev/urandom >"$WORK/f"
cli=("$BIN/step-client" --quiet --server-ip 127.0.0.1 --port "$P" --id prof)
record native-upload server="$SP" -- "${cli[@]}" --key prof -f "$WORK/f"
record native-download server="$SP" -- "${cli[@]}" download prof -o "$WORK/back" --force
cmp -s "$WORK/f" "$WORK/back" || echo "profile: native download differs from the upload" >&2
rm -f "$WORK/back"
record gateway-upload gateway="$GP" server="$SP" -- curl -sS -f -o /dev/null -T "$WORK/f" "http://127.0.0.1:$H/files/prof"
record gateway-download gateway="$GP" server="$SP" -- curl -sS -f -o "$WORK/back" "http://127.0.0.1:$H/files/prof"
cmp -s "$WORK/f" "$WORK/back" || echo "profile: gateway download differs from the upload" >&2
# The gateway as it runs alone: its service in process, one process.
E=$(free_port)
"$BIN/gateway" --bind 127.0.0.1 --port "$E" --step-ip 127.0.0.1 --step-port "$(free_port)" --data-dir "$WORK/store-embedded" \
  --token-secret prof --spool-dir "$WORK" --log error & EP=$!; PIDS+=("$EP")
wait_http "http://127.0.0.1:$E/readyz"
record gateway-embedded-upload gateway="$EP" -- curl -sS -f -o /dev/null -T "$WORK/f" "http://127.0.0.1:$E/files/prof"
record gateway-embedded-download gateway="$EP" -- curl -sS -f -o "$WORK/back" "http://127.0.0.1:$E/files/prof"
cmp -s "$WORK/f" "$WORK/back" || echo "profile: embedded gateway download differs from the upload" >&2
kill "$EP" 2>/dev/null; wait "$EP" 2>/dev/null || true
rm -f "$WORK/f" "$WORK/back"

if [[ -x $OHA ]]; then
  head -c 10240 /dev/urandom >"$WORK/10k"
  load() { "$OHA" -z 5s -c 32 -m PUT -D "$WORK/10k" --rand-regex-url --no-tui --output-format json "http://127.0.0.1:$H/files/p$1-[a-z0-9]{24}"; }
  record small-10KiB gateway="$GP" server="$SP" -- "$OHA" -z 5s -c 32 -m PUT -D "$WORK/10k" --rand-regex-url --no-tui \
    --output-format json "http://127.0.0.1:$H/files/pa-[a-z0-9]{24}"
  # Off-CPU: which calls the server's threads block in.
  perf record -q -e sched:sched_switch -g -o "$WORK/off.data" -p "$SP" 2>/dev/null & R=$!
  sleep 0.5; load b >/dev/null || true; kill -INT "$R"; wait "$R" 2>/dev/null || true
  {
    echo "# step-server off-CPU: context switches by the syscall that blocked (10 KiB PUTs, 32 concurrent)"
    perf script -i "$WORK/off.data" 2>/dev/null | awk '/^[^ \t]/ {inblk=1; first=""; next} inblk && /^[ \t]+[0-9a-f]+ / && first=="" && $2 !~ /^(schedule|__schedule|__traceiter|_raw|preempt|schedule_)/ {first=$2} /^$/ {if (first!="") c[first]++; inblk=0} END {for (k in c) print c[k], k}' | sort -rn | head -20 || true
  } >"$OUT/small-10KiB-offcpu.txt"
else
  echo "profile: oha missing, no 10 KiB profile" >&2
fi
echo "profiles in $OUT, groups in $RAW/profile.txt"
