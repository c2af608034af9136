#!/usr/bin/env bash
# The coordination engine, chosen with numbers (issue 16): the per-block mark
# and the per-key lease pair of the multi-instance design, against Redis 7,
# PostgreSQL 15 and etcd 3.4, driven by bench/src/bin/coord_bench.rs with the
# same concurrency for all, each engine on 127.0.0.1 with a private data dir.
#
#   bench/coord_bench.sh [REPS]        # default 3 repetitions, 5 s each
#   BENCH_QUICK=1 bench/coord_bench.sh # 1 repetition of 2 s
#
# Settings: redis AOF appendfsync everysec / always (RDB off), postgres
# fsync=on with synchronous_commit on / off, etcd defaults. For each: per-
# block op and lease acquire+release at concurrency 1 and 32, then the kill
# test: 32 clients marking blocks, the engine kill -9'd (every process of it)
# after KILL_AT s, restarted DOWN s later from the same data dir; the clients
# report errors, the outage they saw and whether the marks they had been
# acknowledged before the kill are still there.
#
# Writes $RESULTS/raw/coord.txt (key=value lines) and the tables below the
# marker line of $RESULTS/coord.md (the recommendation above it is prose and
# kept). Needs redis-server, postgres 15 (initdb/postgres on PATH or in
# /usr/lib/postgresql/15/bin) and etcd (Debian etcd-server); a missing engine
# is skipped with a note. PostgreSQL refuses to run as root: as root it runs
# as the `postgres` user (setpriv).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
QUICK=${BENCH_QUICK:-0}
REPS=${1:-$([[ $QUICK == 1 ]] && echo 1 || echo 3)}
SECS=${COORD_SECS:-$([[ $QUICK == 1 ]] && echo 2 || echo 5)}
KILL_SECS=${COORD_KILL_SECS:-12}
KILL_AT=${COORD_KILL_AT:-3}
DOWN=${COORD_DOWN:-1}
SETTINGS=${COORD_SETTINGS:-"redis-everysec redis-always postgres-on postgres-off etcd"}
RESULTS=${RESULTS:-$ROOT/bench/results}
RAW=$RESULTS/raw
OUT=$RAW/coord.txt
mkdir -p "$RAW"
: >"$OUT"
PATH=$PATH:/usr/lib/postgresql/15/bin

cargo build --release -q -p step-bench --bin coord_bench
BIN=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release
WORK=$(mktemp -d "${BENCH_TMP:-/tmp}/coordbench.XXXXXX")
chmod 755 "$WORK" # the postgres user reaches its data dir through it
ENGINE_PID=
cleanup() {
  stop_engine
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

note() { echo "note: $*" | tee -a "$RAW/notes.txt" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
load() { cut -d' ' -f1-3 /proc/loadavg; }
now_ms() { date +%s%3N; }
# The engine's processes: the one we started and its children (postgres
# forks a process per connection and its background workers).
descendants() { local c; for c in $(pgrep -P "$1" || true); do echo "$c"; descendants "$c"; done; }
engine_pids() { [[ -n $ENGINE_PID ]] && echo "$ENGINE_PID" $(descendants "$ENGINE_PID"); }
stop_engine() {
  [[ -n $ENGINE_PID ]] || return 0
  kill "$ENGINE_PID" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$ENGINE_PID" 2>/dev/null || break; sleep 0.1; done
  kill -9 $(engine_pids) 2>/dev/null || true
  wait "$ENGINE_PID" 2>/dev/null || true
  ENGINE_PID=
}
kill9_engine() {
  local pids; pids=$(engine_pids)
  kill -9 $pids 2>/dev/null || true
  wait "$ENGINE_PID" 2>/dev/null || true
  # Postgres children die with their parent only when they notice: wait.
  # (a zombie reparented elsewhere counts as gone).
  local p
  for p in $pids; do
    while [[ -e /proc/$p && $(awk '{print $3}' "/proc/$p/stat" 2>/dev/null) != Z ]]; do sleep 0.02; done
  done
  ENGINE_PID=
}
as_pg() { if [[ $(id -u) == 0 ]]; then setpriv --reuid postgres --regid postgres --init-groups -- "$@"; else "$@"; fi; }
# In a background subshell: exec, so that $! is postgres itself.
exec_as_pg() { if [[ $(id -u) == 0 ]]; then exec setpriv --reuid postgres --regid postgres --init-groups -- "$@"; else exec "$@"; fi; }

# launch SETTING DIR PORT: start (or restart over the same DIR) in the
# background, set ENGINE_PID and ADDR, wait until it answers.
launch() {
  local setting=$1 dir=$2 port=$3 i
  case $setting in
    redis-*)
      redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" --appendonly yes --appendfsync "${setting#redis-}" \
        --save '' --protected-mode no --daemonize no --logfile "$dir/redis.log" &
      ENGINE_PID=$!; ADDR=redis://127.0.0.1:$port
      # PING answers LOADING while the AOF is replayed.
      for i in $(seq 1200); do [[ $(redis-cli -p "$port" ping 2>/dev/null) == PONG ]] && return 0; sleep 0.05; done ;;
    postgres-*)
      exec_as_pg postgres -D "$dir/data" -h 127.0.0.1 -p "$port" -k "$dir" -c fsync=on \
        -c synchronous_commit="${setting#postgres-}" -c max_connections=200 -c shared_buffers=128MB \
        >>"$dir/pg.log" 2>&1 &
      ENGINE_PID=$!; ADDR="host=127.0.0.1 port=$port user=bench dbname=postgres"
      for i in $(seq 1200); do pg_isready -q -h 127.0.0.1 -p "$port" && return 0; sleep 0.05; done ;;
    etcd)
      local peer=${ETCD_PEER:-$(free_port)}; ETCD_PEER=$peer
      etcd --name coord --data-dir "$dir/etcd" --listen-client-urls "http://127.0.0.1:$port" \
        --advertise-client-urls "http://127.0.0.1:$port" --listen-peer-urls "http://127.0.0.1:$peer" \
        --initial-advertise-peer-urls "http://127.0.0.1:$peer" --initial-cluster "coord=http://127.0.0.1:$peer" \
        --log-level error >>"$dir/etcd.log" 2>&1 &
      ENGINE_PID=$!; ADDR=http://127.0.0.1:$port
      for i in $(seq 1200); do curl -sf "http://127.0.0.1:$port/health" | grep -q true && return 0; sleep 0.05; done ;;
  esac
  echo "$setting did not come up on $port: $(tail -n 5 "$dir"/*.log 2>/dev/null)" >&2; return 1
}
have() {
  case $1 in
    redis-*) command -v redis-server >/dev/null && command -v redis-cli >/dev/null ;;
    postgres-*) command -v postgres >/dev/null && command -v initdb >/dev/null && { [[ $(id -u) != 0 ]] || id postgres >/dev/null 2>&1; } ;;
    etcd) command -v etcd >/dev/null ;;
  esac
}
version() {
  case $1 in
    redis-*) redis-server --version | awk '{print $3}' | tr -d 'v=' ;;
    postgres-*) postgres --version | awk '{print $3}' ;;
    etcd) etcd --version | awk '/etcd Version/ {print $3}' ;;
  esac
}
engine_of() { echo "${1%%-*}"; }

{
  echo "label=machine date=$(date -u +%Y-%m-%dT%H:%M:%SZ) nproc=$(nproc) cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//' | tr ' ' '_')" \
    "disk=$(df -T "$WORK" | awk 'NR==2 {print $1"_"$2}') reps=$REPS secs=$SECS load_start=$(load | tr ' ' ',')"
} >>"$OUT"

for setting in $SETTINGS; do
  if ! have "$setting"; then note "$setting: engine not installed, skipped"; continue; fi
  echo "== coord: $setting ($(version "$setting")) (load $(load))"
  dir=$WORK/$setting; mkdir -p "$dir"
  [[ $(id -u) == 0 ]] && chown postgres "$dir" 2>/dev/null || true
  if [[ $setting == postgres-* ]]; then
    as_pg initdb -D "$dir/data" -U bench --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1
  fi
  port=$(free_port); ETCD_PEER=
  launch "$setting" "$dir" "$port"
  eng=$(engine_of "$setting")
  for rep in $(seq "$REPS"); do
    for c in 1 32; do
      for op in block lease; do
        "$BIN/coord_bench" --engine "$eng" --addr "$ADDR" --op "$op" --concurrency "$c" --secs "$SECS" \
          --run "r$rep-c$c-$op" --label "$setting" >>"$OUT" || note "$setting $op c=$c failed"
        echo "   rep $rep c=$c $op: $(tail -1 "$OUT" | grep -o 'ops_per_s=[^ ]* p50_ms=[^ ]* p99_ms=[^ ]* errors=[^ ]*')"
      done
    done
  done
  # Kill test: the engine dies under 32 clients and comes back from its disk.
  ev=$dir/events
  : >"$ev"
  "$BIN/coord_bench" --engine "$eng" --addr "$ADDR" --op block --concurrency 32 --secs "$KILL_SECS" \
    --run kill --label "$setting kill -9" --events "$ev" >"$dir/kill.out" 2>"$dir/kill.err" &
  bpid=$!
  sleep "$KILL_AT"
  echo "kill $(now_ms)" >>"$ev"
  kill9_engine
  echo "killed $(now_ms)" >>"$ev"
  sleep "$DOWN"
  echo "restart $(now_ms)" >>"$ev"
  launch "$setting" "$dir" "$port"
  echo "ready $(now_ms)" >>"$ev"
  if wait "$bpid"; then
    ready=$(awk '/^ready/ {print $2}' "$ev"); restart=$(awk '/^restart/ {print $2}' "$ev")
    sed "s/\$/ engine_ready_after_restart_ms=$((ready - restart))/" "$dir/kill.out" >>"$OUT"
    echo "   kill -9: $(grep -o 'first_ok_after_restart_ms=[^ ]* .*' "$dir/kill.out")"
  else
    note "$setting kill test failed: $(tail -c 300 "$dir/kill.err")"
  fi
  stop_engine
  echo "label=version setting=$setting version=$(version "$setting")" >>"$OUT"
done
echo "label=machine_end load_end=$(load | tr ' ' ',')" >>"$OUT"
python3 bench/coord_report.py "$RESULTS"
