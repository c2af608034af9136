#!/usr/bin/env bash
# Upload wall time, whole command included: step-client versus a Python STEP
# client against the same step-server (release, own port and data dir), in the
# same run; and step-client (and the Python client) against the reference
# Python server when its path is given. Nothing of the reference is kept here:
# point the variables at a local checkout of it.
#
#   bench/cli_vs_python.sh [RUNS]
#   PY_CLIENT=/path/to/client.py PORTMAP=/path/to/portmap.py \
#   REF_SERVER=/path/to/server.py bench/cli_vs_python.sh 3
#
# PY_CLIENT: a course client taking --server_ip/--id/--f and hard-coding port
#            1379; PORTMAP: a wrapper `portmap.py PORT client.py ARGS...`
#            that points it at another port. Either unset: Python column skipped.
# REF_SERVER: the reference server.py (--ip/--port); unset: its rows skipped.
# SIZES: file sizes in bytes (default 10 KiB, 1 MiB, 100 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
SIZES=${SIZES:-"10240 1048576 104857600"}
PY_CLIENT=${PY_CLIENT:-}
PORTMAP=${PORTMAP:-}
REF_SERVER=${REF_SERVER:-}

cargo build --release -q -p step-server -p step-client
BIN=$PWD/target/release
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "nothing listening on $1" >&2; return 1
}
now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

OURS=$(free_port)
"$BIN/step-server" --ip 127.0.0.1 --port "$OURS" --data-dir "$WORK/store" --log error >/dev/null 2>&1 &
PIDS+=($!)
wait_port "$OURS"

REF=
if [[ -n "$REF_SERVER" ]]; then
  REF=$(free_port)
  mkdir -p "$WORK/ref"
  (cd "$WORK/ref" && exec python3 "$REF_SERVER" --ip 127.0.0.1 --port "$REF" >"$WORK/ref/server.out" 2>&1) &
  PIDS+=($!)
  wait_port "$REF"
fi

mkdir -p "$WORK/files"
for size in $SIZES; do
  head -c "$size" /dev/urandom >"$WORK/files/f$size.bin"
done

# A fresh user per upload (a finished key cannot be uploaded again); the
# timing functions run in subshells, so no counter would survive them.
user() { echo "b$(date +%s%N)$RANDOM"; }
# time_step PORT FILE: seconds for one step-client upload under a fresh user.
time_step() {
  local t0 t1 id
  id=$(user)
  t0=$(now)
  (cd "$WORK/files" && "$BIN/step-client" --quiet -server_ip 127.0.0.1 -port "$1" -id "$id" -f "$2" >/dev/null)
  t1=$(now)
  awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }'
}
# time_py PORT FILE: the same with the Python client (exit code is no proof
# of success for it, so its own verification line is required).
time_py() {
  local t0 t1 id out
  id=$(user)
  out="$WORK/py$id.log"
  t0=$(now)
  (cd "$WORK/files" && python3 "$PORTMAP" "$1" "$PY_CLIENT" --server_ip 127.0.0.1 --id "$id" --f "$2" >"$out" 2>&1)
  t1=$(now)
  grep -qi "verification successful" "$out" || { echo "python client failed: $(tail -1 "$out")" >&2; echo nan; return; }
  awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }'
}
measure() { # measure FN PORT FILE -> median seconds over RUNS
  local i
  for i in $(seq "$RUNS"); do "$1" "$2" "$3"; done | median
}

printf '| size | step-client → step-server | Python client → step-server |'
[[ -n "$REF" ]] && printf ' step-client → reference | Python client → reference |'
printf '\n|---|---|---|'
[[ -n "$REF" ]] && printf -- '---|---|'
printf '\n'
for size in $SIZES; do
  f="f$size.bin"
  ours_step=$(measure time_step "$OURS" "$f")
  ours_py=-
  [[ -n "$PY_CLIENT" && -n "$PORTMAP" ]] && ours_py=$(measure time_py "$OURS" "$f")
  printf '| %s | %.3f s | %s |' "$size" "$ours_step" "$( [[ $ours_py == - ]] && echo - || printf '%.3f s' "$ours_py")"
  if [[ -n "$REF" ]]; then
    ref_step=$(measure time_step "$REF" "$f")
    ref_py=-
    [[ -n "$PY_CLIENT" && -n "$PORTMAP" ]] && ref_py=$(measure time_py "$REF" "$f")
    printf ' %.3f s | %s |' "$ref_step" "$( [[ $ref_py == - ]] && echo - || printf '%.3f s' "$ref_py")"
  fi
  printf '\n'
done
echo "(median of $RUNS runs each; wall time of the whole command, login and md5 check included)"
