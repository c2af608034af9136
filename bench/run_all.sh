#!/usr/bin/env bash
# The whole benchmark suite (issue 6), one command:
#
#   bench/run_all.sh                 # full run, ~15 minutes on 2 cores
#   BENCH_QUICK=1 bench/run_all.sh   # smoke test, ~3 minutes (fewer runs, no 1 GiB)
#
# Writes bench/results/: raw/*.txt (one key=value line per measured run, as
# printed by the tools), runs.csv (every run), summary.json, summary.md
# (the tables of BENCHMARKS.md) and the plots (*.png). Everything runs on
# loopback; every comparison inside one section is measured in the same run,
# interleaved where it is cheap to.
#
# Environment:
#   REF_DIR=/tmp/ref      local checkout of the reference Python server and
#                         client (xjtlu/server.py, xjtlu/client.py); never
#                         committed. Absent: the reference series are skipped.
#   SECTIONS="fig8 fig9 large download client small idle profile garage coord"
#                         run only some sections (profile: bench/profile.sh,
#                         perf on the upload and download paths)
#                         (garage: bench/garage_ceiling.sh, the step-server on
#                         Garage next to disk and Garage's own throughput)
#                         (coord: bench/coord_bench.sh, the coordination
#                         engines of issue 16: Redis, PostgreSQL, etcd)
#                         (client: bench/client_bench.sh, step-client's
#                         goals beside md5sum, dufs and the course client;
#                         CLIENT_BASELINE=/path/to/another/step-client adds
#                         it, alternating, as the "now" column)
#                         (cluster: bench/cluster_bench.sh, deploy/cluster
#                         measured; not in the default list: it needs Docker
#                         and about 20 minutes, e.g. SECTIONS=cluster)
#   BENCH_TMP=/tmp        where test files and stores go (same disk as dd)
#   RESULTS=bench/results output directory
#   BENCHMARKS_MD=BENCHMARKS.md  where the regenerated page goes
#   BENCH_OWN_FS=0        10 KiB section on BENCH_TMP instead of a loop-mounted
#                         ext4 image of its own
# Tools: iperf3 (apt-get install iperf3), oha (cargo install oha --locked),
# dufs (cargo install dufs --locked), python3 with matplotlib (pip install
# matplotlib) for the plots. A missing tool skips its series with a note.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
QUICK=${BENCH_QUICK:-0}
REF_DIR=${REF_DIR:-/tmp/ref}
REF_SERVER=$REF_DIR/xjtlu/server.py
PY_CLIENT=$REF_DIR/xjtlu/client.py
SECTIONS=${SECTIONS:-"fig8 fig9 large download client small idle profile garage coord"}
RESULTS=${RESULTS:-$ROOT/bench/results}
RAW=$RESULTS/raw
mkdir -p "$RAW"
rm -f "$RAW"/*.txt

echo "== building (release)"
cargo build --release -q -p step-server -p step-bench -p gateway -p step-client
BIN=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release
WORK=$(mktemp -d "${BENCH_TMP:-/tmp}/stepbench.XXXXXX")
PIDS=()
FS_MOUNT=
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if [[ -n $FS_MOUNT ]]; then umount "$FS_MOUNT" 2>/dev/null || umount -l "$FS_MOUNT" || true; fi
  rm -rf "$WORK"
  if [[ -n ${SHM_DIR:-} ]]; then rm -rf "$SHM_DIR"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

note() { echo "$*" | tee -a "$RAW/notes.txt" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "nothing listening on $1" >&2; return 1
}
wait_http() { for _ in $(seq 200); do curl -sf -o /dev/null "$1" && return 0; sleep 0.05; done; echo "no answer from $1" >&2; return 1; }
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
hwm_kb() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
reset_hwm() { echo 5 > "/proc/$1/clear_refs"; }
have_ref() { [[ -f $REF_SERVER && -f $PY_CLIENT ]]; }
load() { cut -d' ' -f1-3 /proc/loadavg; }

# Each start_* sets a variable with the PID and one with the port.
start_step() { # start_step NAME [DATA_DIR] -> STEP_PID STEP_PORT
  STEP_PORT=$(free_port)
  "$BIN/step-server" --ip 127.0.0.1 --anonymous write --port "$STEP_PORT" --data-dir "${2:-$WORK/store-$1}" \
    --token-secret "bench-$$" --log error >"$WORK/step-$1.log" 2>&1 &
  STEP_PID=$!; PIDS+=("$STEP_PID")
  wait_port "$STEP_PORT"
}
start_ref() { # -> REF_PID REF_PORT
  REF_PORT=$(free_port)
  mkdir -p "$WORK/ref-$1"
  (cd "$WORK/ref-$1" && exec python3 "$REF_SERVER" --ip 127.0.0.1 --port "$REF_PORT" >"$WORK/ref-$1/server.out" 2>&1) &
  REF_PID=$!; PIDS+=("$REF_PID")
  wait_port "$REF_PORT"
}
start_gateway() { # start_gateway [SPOOL_DIR], needs STEP_PORT -> GW_PID GW_PORT
  GW_PORT=$(free_port)
  "$BIN/gateway" --bind 127.0.0.1 --port "$GW_PORT" --backend "127.0.0.1:$STEP_PORT" \
    --spool-dir "${1:-$WORK}" --log error >"$WORK/gateway.log" 2>&1 &
  GW_PID=$!; PIDS+=("$GW_PID")
  wait_http "http://127.0.0.1:$GW_PORT/readyz"
}
# The gateway as `cargo run -p gateway` runs it: its own step-server in
# process over --data-dir (no loopback STEP between them), STEP port on a free
# port. Its peak RSS covers both roles.
start_gateway_embedded() { # start_gateway_embedded NAME -> GWE_PID GWE_PORT
  GWE_PORT=$(free_port)
  "$BIN/gateway" --bind 127.0.0.1 --port "$GWE_PORT" --step-ip 127.0.0.1 --step-port "$(free_port)" \
    --data-dir "$WORK/store-embedded-$1" --token-secret "bench-$$" --spool-dir "$WORK" --log error \
    >"$WORK/gateway-embedded.log" 2>&1 &
  GWE_PID=$!; PIDS+=("$GWE_PID")
  wait_http "http://127.0.0.1:$GWE_PORT/readyz"
}
DUFS=$(command -v dufs || echo "$HOME/.cargo/bin/dufs")
OHA=$(command -v oha || echo "$HOME/.cargo/bin/oha")
start_dufs() { # start_dufs [DIR] -> DUFS_PID DUFS_PORT DUFS_DIR (PID empty when dufs is missing)
  DUFS_PID=; DUFS_PORT=; DUFS_DIR=${1:-$WORK/dufs}
  [[ -x $DUFS ]] || { note "note: dufs not installed (cargo install dufs --locked); its series are empty"; return 0; }
  DUFS_PORT=$(free_port); mkdir -p "$DUFS_DIR"
  "$DUFS" -A -b 127.0.0.1 -p "$DUFS_PORT" "$DUFS_DIR" >/dev/null 2>&1 &
  DUFS_PID=$!; PIDS+=("$DUFS_PID")
  wait_http "http://127.0.0.1:$DUFS_PORT/"
}
bench() { "$BIN/step-bench" "$@" || true; } # failures are printed as error= lines

# ------------------------------------------------------------------ machine
{
  echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "nproc=$(nproc)"
  echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
  echo "mem_gib=$(awk '/MemTotal/ {printf "%.1f", $2/1048576}' /proc/meminfo)"
  echo "kernel=$(uname -r)"
  echo "disk=$(df -hT "$WORK" | awk 'NR==2 {print $1" "$2" "$3}')"
  echo "rustc=$(rustc --version)"
  echo "quick=$QUICK"
  echo "load_start=$(load)"
} >"$RAW/machine.txt"
: >"$RAW/notes.txt"

RUNS_SMALL=$([[ $QUICK == 1 ]] && echo 3 || echo 10)

# ------------------------------------------------------------ 1. figure 8
section_fig8() {
  echo "== 1. figure 8: upload time vs size (load $(load))"
  local out=$RAW/fig8.txt sizes
  : >"$out"
  # Ten sizes from 9.5 KB to 976.6 KB (KB = 1024 bytes, as in the study):
  # 9728 B to 1,000,000 B, evenly spaced.
  sizes=$(python3 -c 'print(",".join(str(round(9728 + k * (1000000 - 9728) / 9)) for k in range(10)))')
  start_step fig8
  local shm_pid; SHM_PORT=$(free_port); SHM_DIR=$(mktemp -d /dev/shm/stepbench.XXXXXX)
  "$BIN/step-server" --ip 127.0.0.1 --anonymous write --port "$SHM_PORT" --data-dir "$SHM_DIR" --token-secret "bench-$$" --log error >/dev/null 2>&1 &
  shm_pid=$!; PIDS+=("$shm_pid")
  wait_port "$SHM_PORT"
  if have_ref; then start_ref fig8; else note "note: no reference at $REF_DIR: Python series skipped"; fi
  local s
  for s in ${sizes//,/ }; do
    if have_ref; then
      python3 bench/py_client_time.py --client "$PY_CLIENT" --port "$REF_PORT" --label "python→reference" \
        --sizes "$s" --runs "$RUNS_SMALL" >>"$out" || true
      python3 bench/py_client_time.py --client "$PY_CLIENT" --port "$STEP_PORT" --label "python→step-server" \
        --sizes "$s" --runs "$RUNS_SMALL" >>"$out" || true
    fi
    bench --addr "127.0.0.1:$STEP_PORT" --size "$s" --runs "$RUNS_SMALL" --window 1 --label "step-client→step-server stop-and-wait" >>"$out"
    bench --addr "127.0.0.1:$STEP_PORT" --size "$s" --runs "$RUNS_SMALL" --window 16 --label "step-client→step-server pipelined" >>"$out"
    # The same with the store on tmpfs: what is left without the disk's fsyncs.
    bench --addr "127.0.0.1:$SHM_PORT" --size "$s" --runs "$RUNS_SMALL" --window 16 --label "step-client→step-server pipelined, store on tmpfs" >>"$out"
  done
  stop "$STEP_PID"; stop "$shm_pid"; rm -rf "$SHM_DIR"; have_ref && stop "$REF_PID"
  return 0
}

# ------------------------------------------------------------ 2. figure 9
section_fig9() {
  echo "== 2. figure 9: 515 blocks (load $(load))"
  local out=$RAW/fig9.txt w c target port ref_runs
  : >"$out"
  ref_runs=$([[ $QUICK == 1 ]] && echo 2 || echo 5)
  start_step fig9
  have_ref && start_ref fig9
  for target in step-server reference; do
    if [[ $target == reference ]]; then have_ref || continue; port=$REF_PORT; runs=$ref_runs; to=5
    else port=$STEP_PORT; runs=$RUNS_SMALL; to=30; fi
    for w in 1 2 4 8 16 32; do
      bench --addr "127.0.0.1:$port" --blocks 515 --runs "$runs" --timeout "$to" --window "$w" \
        --label "$target|window $w" >>"$out"
    done
    for c in 2 4 8; do
      bench --addr "127.0.0.1:$port" --blocks 515 --runs "$runs" --timeout "$to" --window 1 --connections "$c" \
        --label "$target|$c connections" >>"$out"
    done
  done
  if have_ref; then
    # The study's own client, plain loop, on both servers.
    python3 bench/py_client_time.py --client "$PY_CLIENT" --port "$REF_PORT" --label "reference|python client" \
      --sizes $((515 * 20480)) --runs "$ref_runs" >>"$out" || true
    python3 bench/py_client_time.py --client "$PY_CLIENT" --port "$STEP_PORT" --label "step-server|python client" \
      --sizes $((515 * 20480)) --runs "$ref_runs" >>"$out" || true
  fi
  stop "$STEP_PID"; have_ref && stop "$REF_PID"
  return 0
}

# ------------------------------------------------------- 3 + 6. large files
# One line per run: label=... size=... secs=... [gw_hwm_kib= step_hwm_kib=].
timed_curl() { # timed_curl LABEL SIZE FILE -- curl args: upload, check md5 in answer
  local label=$1 size=$2 f=$3 t answer; shift 4
  reset_hwm "$GW_PID"; reset_hwm "$STEP_PID"
  t=$(curl -sS -o "$WORK/answer" -w '%{time_total}' "$@") || { echo "label=$label size=$size error=curl_failed"; return; }
  answer=$(cat "$WORK/answer")
  if [[ $answer != *"\"md5\":\"$(cat "$f.md5")\""* ]]; then
    echo "label=$label size=$size error=bad_answer:$(echo "$answer" | tr -s ' \n' '__' | cut -c1-150)"; return
  fi
  echo "label=$label size=$size secs=$t mb_per_s=$(awk -v s="$size" -v t="$t" 'BEGIN {printf "%.1f", s/t/1e6}') gw_hwm_kib=$(hwm_kb "$GW_PID") step_hwm_kib=$(hwm_kb "$STEP_PID")"
}
native_mem() { # native_mem SIZE step-bench args: one in-memory upload, server peak RSS appended
  local size=$1 line; shift
  reset_hwm "$STEP_PID"
  line=$(bench --addr "127.0.0.1:$STEP_PORT" --size "$size" --block-size 1048576 "$@")
  echo "$line step_hwm_kib=$(hwm_kb "$STEP_PID")"
}
section_large() {
  echo "== 3. large files (load $(load))"
  local out=$RAW/large.txt phys=$RAW/physical.txt sizes runs size f run key t
  : >"$out"; : >"$phys"
  if [[ $QUICK == 1 ]]; then sizes="$((100 << 20))"; runs=1; else sizes="$((100 << 20)) $((1 << 30))"; runs=3; fi

  # Physical limits, measured now, next to the transfers.
  if command -v iperf3 >/dev/null; then
    local ip; ip=$(free_port)
    iperf3 -s -1 -B 127.0.0.1 -p "$ip" >/dev/null 2>&1 & PIDS+=($!); local ipid=$!
    sleep 0.5
    iperf3 -c 127.0.0.1 -p "$ip" -t "$([[ $QUICK == 1 ]] && echo 2 || echo 5)" -J >"$WORK/iperf.json" 2>/dev/null || true
    stop "$ipid"
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("label=loopback TCP (iperf3, 1 stream) mb_per_s=%.1f" % (d["end"]["sum_received"]["bits_per_second"]/8e6))' "$WORK/iperf.json" >>"$phys" || note "iperf3 failed"
  else
    note "note: iperf3 missing (apt-get install iperf3): no loopback TCP limit"
  fi
  for run in $(seq "$runs"); do
    dd if=/dev/zero of="$WORK/dd.bin" bs=1M count=1024 conv=fdatasync 2>&1 | awk '/copied/ {
      for (i=1;i<=NF;i++) if ($i=="s,") t=$(i-1); printf "label=disk write 1 GiB (dd, fdatasync) mb_per_s=%.1f\n", 1073741824/t/1e6 }' >>"$phys"
    rm -f "$WORK/dd.bin"
  done
  openssl speed -seconds 3 md5 2>/dev/null | awk '/^md5/ {v=$NF; sub("k","",v); printf "label=md5 one core (openssl speed, 16 KiB blocks) mb_per_s=%.1f\n", v*1000/1e6}' >>"$phys" || true

  start_step large
  start_gateway
  start_gateway_embedded large
  start_dufs
  have_ref && start_ref large
  for size in $sizes; do
    f=$WORK/file-$size
    head -c "$size" /dev/urandom >"$f"
    md5sum "$f" | cut -d' ' -f1 >"$f.md5"
    local t0 t1
    t0=$(date +%s.%N); md5sum "$f" >/dev/null; t1=$(date +%s.%N)
    echo "label=md5sum of the file (page cache) size=$size mb_per_s=$(awk -v s="$size" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", s/(b-a)/1e6}')" >>"$phys"
    for run in $(seq "$runs"); do
      key=k$run-$size-$RANDOM
      # native: the step-client command (defaults: 1 MiB blocks, window 16,
      # 4 connections), file from page cache, whole command timed.
      reset_hwm "$STEP_PID"
      t0=$(date +%s.%N)
      if (cd "$WORK" && "$BIN/step-client" --quiet --server-ip 127.0.0.1 --port "$STEP_PORT" --id bench \
          --key "$key-cli" -f "$f" >"$WORK/cli.out" 2>&1); then
        t1=$(date +%s.%N)
        echo "label=native step-client size=$size secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b-a}') mb_per_s=$(awk -v s="$size" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", s/(b-a)/1e6}') step_hwm_kib=$(hwm_kb "$STEP_PID")" >>"$out"
      else
        echo "label=native step-client size=$size error=$(tail -1 "$WORK/cli.out" | tr -s ' ' '_')" >>"$out"
      fi
      "$BIN/step-client" --quiet --server-ip 127.0.0.1 --port "$STEP_PORT" --id bench delete "$key-cli" >/dev/null 2>&1 || true
      # native, in memory (no client disk): one connection pipelined, and four.
      native_mem "$size" --window 16 --label "native 1 conn w16 1MiB" >>"$out"
      native_mem "$size" --window 8 --connections 4 --label "native 4 conn w8 1MiB" >>"$out"
      # gateway
      timed_curl "gateway curl -T" "$size" "$f" -- -T "$f" "http://127.0.0.1:$GW_PORT/files/$key-T" >>"$out"
      timed_curl "gateway curl -F" "$size" "$f" -- -F "file=@$f;filename=$key-F" "http://127.0.0.1:$GW_PORT/upload" >>"$out"
      curl -s -o /dev/null -X DELETE "http://127.0.0.1:$GW_PORT/files/$key-T" || true
      curl -s -o /dev/null -X DELETE "http://127.0.0.1:$GW_PORT/files/$key-F" || true
      GW_PID=$GWE_PID STEP_PID=$GWE_PID timed_curl "gateway embedded curl -T" "$size" "$f" -- \
        -T "$f" "http://127.0.0.1:$GWE_PORT/files/$key-T" >>"$out"
      curl -s -o /dev/null -X DELETE "http://127.0.0.1:$GWE_PORT/files/$key-T" || true
      # dufs PUT of the same file
      if [[ -n $DUFS_PID ]]; then
        reset_hwm "$DUFS_PID"
        t=$(curl -sS -o /dev/null -w '%{time_total}' -T "$f" "http://127.0.0.1:$DUFS_PORT/$key") &&
          echo "label=dufs PUT size=$size secs=$t mb_per_s=$(awk -v s="$size" -v t="$t" 'BEGIN {printf "%.1f", s/t/1e6}') dufs_hwm_kib=$(hwm_kb "$DUFS_PID")" >>"$out"
        rm -f "$DUFS_DIR/$key"
      fi
    done
    if [[ $size -le $((100 << 20)) ]] && have_ref; then
      # The reference pair (its client and server) and our client against it.
      python3 bench/py_client_time.py --client "$PY_CLIENT" --port "$REF_PORT" --label "reference pair (python client → reference)" \
        --sizes "$size" --runs "$runs" --timeout 60 >>"$out" || true
      bench --addr "127.0.0.1:$REF_PORT" --size "$size" --runs "$runs" --timeout 60 --window 1 \
        --label "step client → reference" >>"$out"
      rm -rf "$WORK/ref-large/file" "$WORK/ref-large/tmp"
    fi
    # Byte-for-byte check of one copy through the gateway.
    curl -sS -o /dev/null -T "$f" "http://127.0.0.1:$GW_PORT/files/verify-$size"
    curl -sS -o "$WORK/back" "http://127.0.0.1:$GW_PORT/files/verify-$size"
    if cmp -s "$f" "$WORK/back"; then echo "label=verify size=$size identical=1" >>"$out"; else note "MISMATCH: $size through the gateway"; fi
    curl -s -o /dev/null -X DELETE "http://127.0.0.1:$GW_PORT/files/verify-$size" || true
    rm -f "$f" "$WORK/back"
  done
  stop "$GW_PID"; stop "$GWE_PID"; stop "$STEP_PID"; [[ -n $DUFS_PID ]] && stop "$DUFS_PID"; have_ref && stop "$REF_PID"
  return 0
}

# ------------------------------------------------------ own file system
# The 10 KiB comparisons are fsync-bound for the gateway: on the shared root
# disk they measure everyone else's builds as much as us. As root, gateway
# (store and spool) and dufs both get one fresh ext4 image, loop-mounted,
# so they pay the same file system; otherwise BENCH_TMP, with a note.
FS_DIR=
own_fs() { # -> FS_DIR
  [[ -n $FS_DIR ]] && return 0
  local img=$WORK/fs.img mnt=$WORK/fs gib=$([[ $QUICK == 1 ]] && echo 4 || echo 16)
  mkdir -p "$mnt"
  # Inode tables written now, not by ext4lazyinit in the background while we measure.
  if [[ ${BENCH_OWN_FS:-1} == 1 && $(id -u) == 0 ]] && truncate -s "${gib}G" "$img" &&
    mkfs.ext4 -q -F -i 8192 -E lazy_itable_init=0,lazy_journal_init=0 "$img" >/dev/null 2>&1 &&
    mount -o loop "$img" "$mnt" 2>/dev/null; then
    FS_MOUNT=$mnt; FS_DIR=$mnt
    echo "small_fs=ext4 on a ${gib} GiB image of its own, loop-mounted ($(findmnt -no SOURCE "$mnt")), on $(df -T "$WORK" | awk 'NR==2 {print $1" "$2}')" >>"$RAW/machine.txt"
  else
    rm -f "$img"; FS_DIR=$WORK/fsdir; mkdir -p "$FS_DIR"
    echo "small_fs=$(df -T "$WORK" | awk 'NR==2 {print $1" "$2}') under BENCH_TMP, shared with the rest of the machine (no loop mount: BENCH_OWN_FS=0, not root or no loop device)" >>"$RAW/machine.txt"
    note "note: no loop mount for the 10 KiB section: gateway and dufs share BENCH_TMP's file system with everything else"
  fi
}

# oha_line LABEL CONCURRENCY [extra key=value...]: one line from $WORK/oha.json.
oha_line() {
  python3 - "$WORK/oha.json" "$@" <<'PY' || note "oha failed for $1 c=$2: $(head -c 300 "$WORK/oha.err")"
import json, sys
d = json.load(open(sys.argv[1]))
s, lat = d["summary"], d["latencyPercentiles"]
codes = d.get("statusCodeDistribution", {})
ok = sum(v for k, v in codes.items() if k.startswith("2"))
# Requests cut off when the time is up are not failures.
errs = {k: v for k, v in d.get("errorDistribution", {}).items() if "deadline" not in k}
bad = sum(v for k, v in codes.items() if not k.startswith("2")) + sum(errs.values())
extra = "".join(" " + x for x in sys.argv[4:])
print(f"label={sys.argv[2]} concurrency={sys.argv[3]} rps={ok / s['total']:.1f} p50_ms={lat['p50'] * 1e3:.2f} "
      f"p99_ms={lat['p99'] * 1e3:.2f} ok={ok} failed={bad}{extra}")
PY
}
# listed PORT PREFIX: how many complete files the gateway lists under PREFIX.
listed() {
  python3 - "$1" "$2" <<'PY' || echo "?"
import json, sys, urllib.parse, urllib.request
port, prefix, n, cursor = sys.argv[1], sys.argv[2], 0, None
while True:
    q = {"prefix": prefix, "limit": 1000} | ({"cursor": cursor} if cursor else {})
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/files?{urllib.parse.urlencode(q)}", timeout=120) as r:
        page = json.load(r)
    n += len(page["files"])
    cursor = page.get("next_cursor")
    if not cursor:
        break
print(n)
PY
}

# -------------------------------------------------------- 4. small files
section_small() {
  echo "== 4. 10 KiB uploads, oha (load $(load))"
  local out=$RAW/small.txt secs c
  : >"$out"
  [[ -x $OHA ]] || { note "note: oha missing (cargo install oha --locked): small-file section skipped"; return 0; }
  own_fs
  # Repeated and interleaved (gateway, dufs, gateway, ...) for medians.
  secs=$([[ $QUICK == 1 ]] && echo 2 || echo 4)
  local reps rep; reps=$([[ $QUICK == 1 ]] && echo 1 || echo 3)
  start_step small "$FS_DIR/store-small"
  start_gateway "$FS_DIR"
  start_dufs "$FS_DIR/dufs"
  # The same gateway and server with the store on tmpfs: what the path costs
  # without the disk's fsyncs (dufs does not fsync at all).
  local shm_step shm_port shm_gw shm_gw_port
  SHM_DIR=$(mktemp -d /dev/shm/stepbench.XXXXXX)
  shm_port=$(free_port)
  "$BIN/step-server" --ip 127.0.0.1 --anonymous write --port "$shm_port" --data-dir "$SHM_DIR/store" --token-secret "bench-$$" --log error >/dev/null 2>&1 &
  shm_step=$!; PIDS+=("$shm_step")
  wait_port "$shm_port"
  shm_gw_port=$(free_port)
  "$BIN/gateway" --bind 127.0.0.1 --port "$shm_gw_port" --backend "127.0.0.1:$shm_port" --spool-dir "$SHM_DIR" --log error >/dev/null 2>&1 &
  shm_gw=$!; PIDS+=("$shm_gw")
  wait_http "http://127.0.0.1:$shm_gw_port/readyz"
  head -c 10240 /dev/urandom >"$WORK/10k.bin"
  for c in 1 8 32 128; do
   for rep in $(seq "$reps"); do
    for target in gateway dufs "gateway, store on tmpfs"; do
      local url port prefix=c$c-r$rep-
      case $target in
        gateway) port=$GW_PORT; url="http://127.0.0.1:$port/files/$prefix[a-z0-9]{24}" ;;
        dufs) [[ -n $DUFS_PID ]] || continue; url="http://127.0.0.1:$DUFS_PORT/$prefix[a-z0-9]{24}" ;;
        *) port=$shm_gw_port; url="http://127.0.0.1:$port/files/$prefix[a-z0-9]{24}" ;;
      esac
      "$OHA" -z "${secs}s" -c "$c" -m PUT -D "$WORK/10k.bin" -T application/octet-stream --rand-regex-url \
        --no-tui --output-format json "$url" >"$WORK/oha.json" 2>"$WORK/oha.err" || true
      # stored: files found afterwards under this run's prefix, to hold
      # against ok (every 2xx must be there; a request cut off by the
      # deadline may add one more). fsync: whether the server syncs a
      # file before its 2xx (the gateway's step-server does; dufs does not).
      if [[ $target == dufs ]]; then
        oha_line "$target" "$c" "stored=$(find "$DUFS_DIR" -maxdepth 1 -name "$prefix*" | wc -l)" fsync=0 >>"$out"
      else
        oha_line "$target" "$c" "stored=$(listed "$port" "$prefix")" fsync=1 >>"$out"
      fi
    done
   done
  done
  small_native "$reps"
  stop "$GW_PID"; stop "$STEP_PID"; [[ -n $DUFS_PID ]] && stop "$DUFS_PID"
  stop "$shm_gw"; stop "$shm_step"; rm -rf "$SHM_DIR"
  return 0
}

# Native 10 KiB uploads straight to the step-server of section 4 (same file
# system), by bench/src/bin/small_native.rs when this tree has it. Its flags
# are read from its --help so the call does not depend on their spelling.
small_native() { # small_native REPS, needs STEP_PORT
  local out=$RAW/small_native.txt help args=() opt rep
  if [[ ! -f bench/src/bin/small_native.rs || ! -x $BIN/small_native ]]; then
    note "note: no bench/src/bin/small_native.rs in this tree: native 10 KiB series not measured"; return 0
  fi
  help=$("$BIN/small_native" --help 2>&1) || true
  pick() { local o; for o in "$@"; do [[ $help == *"$o "* || $help == *"$o="* || $help == *"$o <"* ]] && { echo "$o"; return 0; }; done; return 1; }
  opt=$(pick --addr --server) && args+=("$opt" "127.0.0.1:$STEP_PORT")
  opt=$(pick --concurrency --uploaders --clients --conns --connections --tasks -n) && args+=("$opt" 32)
  opt=$(pick --size --bytes --file-size) && args+=("$opt" 10240)
  if opt=$(pick --secs --seconds --duration); then args+=("$opt" "$([[ $QUICK == 1 ]] && echo 2 || echo 4)")
  elif opt=$(pick --requests --files --count --uploads); then args+=("$opt" "$([[ $QUICK == 1 ]] && echo 2000 || echo 10000)"); fi
  opt=$(pick --label) && args+=("$opt" "native 10 KiB uploads, c=32")
  for rep in $(seq "$1"); do
    # Its result line becomes a label= line like every other tool's.
    "$BIN/small_native" "${args[@]}" 2>"$WORK/small_native.err" |
      sed -E '/^label=/! s/^[A-Za-z_ -]+: ([a-z_]+=)/label=native 10 KiB uploads, 32 concurrent \1/' >>"$out" ||
      note "small_native failed (${args[*]}): $(tail -c 300 "$WORK/small_native.err")"
  done
}

# ------------------------------------------------------------- downloads
# timed_get LABEL SIZE MD5 -- COMMAND: the whole command timed; it must leave
# the file in $WORK/dl-out, whose md5 is checked after the clock stops.
timed_get() {
  local label=$1 size=$2 want=$3 t0 t1 got hwm=; shift 4
  rm -f "$WORK/dl-out"
  [[ -n ${GW_PID:-} ]] && reset_hwm "$GW_PID"
  reset_hwm "$STEP_PID"
  t0=$(date +%s.%N)
  if ! "$@" >"$WORK/dl.log" 2>&1; then
    echo "label=$label size=$size error=$(tail -c 150 "$WORK/dl.log" | tr -s ' \n' '__' | tr -d '=')"; return
  fi
  t1=$(date +%s.%N)
  got=$(md5sum "$WORK/dl-out" | cut -d' ' -f1)
  if [[ $got != "$want" ]]; then echo "label=$label size=$size error=md5_mismatch:$got"; return; fi
  # Peak RSS of our processes on the paths that go through them.
  case $label in
    gateway*) hwm=" gw_hwm_kib=$(hwm_kb "$GW_PID") step_hwm_kib=$(hwm_kb "$STEP_PID")" ;;
    native*) hwm=" step_hwm_kib=$(hwm_kb "$STEP_PID")" ;;
  esac
  echo "label=$label size=$size secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b-a}') mb_per_s=$(awk -v s="$size" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", s/(b-a)/1e6}') md5_ok=1$hwm"
}
section_download() {
  echo "== downloads (load $(load))"
  local out=$RAW/download.txt size runs f sum run secs reps rep i t0 t1
  : >"$out"
  if [[ $QUICK == 1 ]]; then size=$((100 << 20)); runs=1; else size=$((1 << 30)); runs=3; fi
  start_step download
  start_gateway
  start_gateway_embedded download
  start_dufs
  have_ref && start_ref download
  f=$WORK/dl-src
  head -c "$size" /dev/urandom >"$f"
  sum=$(md5sum "$f" | cut -d' ' -f1)
  t0=$(date +%s.%N); md5sum "$f" >/dev/null; t1=$(date +%s.%N)
  echo "label=md5sum of the file (page cache) size=$size mb_per_s=$(awk -v s="$size" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", s/(b-a)/1e6}')" >>"$out"
  # The same bytes on every server, put there once, not timed.
  (cd "$WORK" && "$BIN/step-client" --quiet --server-ip 127.0.0.1 --port "$STEP_PORT" --id bench --key dl -f "$f") >/dev/null
  curl -sS -f -o /dev/null -T "$f" "http://127.0.0.1:$GW_PORT/files/dl"
  curl -sS -f -o /dev/null -T "$f" "http://127.0.0.1:$GWE_PORT/files/dl"
  [[ -n $DUFS_PID ]] && cp "$f" "$DUFS_DIR/dl"
  # Into the reference's own layout (file/<user>/<key>): uploading 1 GiB
  # through it takes many minutes (it re-reads its per-block log each block).
  have_ref && mkdir -p "$WORK/ref-download/file/bench" && cp "$f" "$WORK/ref-download/file/bench/dl"
  local cli=("$BIN/step-client" --quiet --server-ip 127.0.0.1 --id bench)
  for run in $(seq "$runs"); do
    timed_get "gateway GET (curl)" "$size" "$sum" -- curl -sS -f -o "$WORK/dl-out" "http://127.0.0.1:$GW_PORT/files/dl" >>"$out"
    GW_PID=$GWE_PID STEP_PID=$GWE_PID timed_get "gateway embedded GET (curl)" "$size" "$sum" -- \
      curl -sS -f -o "$WORK/dl-out" "http://127.0.0.1:$GWE_PORT/files/dl" >>"$out"
    [[ -n $DUFS_PID ]] && timed_get "dufs GET (curl)" "$size" "$sum" -- curl -sS -f -o "$WORK/dl-out" "http://127.0.0.1:$DUFS_PORT/dl" >>"$out"
    timed_get "native step-client download" "$size" "$sum" -- "${cli[@]}" --port "$STEP_PORT" download dl -o "$WORK/dl-out" --force >>"$out"
    if have_ref; then
      timed_get "step-client download ← reference" "$size" "$sum" -- "${cli[@]}" --port "$REF_PORT" download dl -o "$WORK/dl-out" --force >>"$out"
      timed_get "python stop-and-wait download ← reference" "$size" "$sum" -- \
        python3 bench/py_download.py --port "$REF_PORT" --key dl --output "$WORK/dl-out" --timeout 60 >>"$out"
    fi
  done
  rm -f "$f" "$WORK/dl-out"

  # 10 KiB GETs at 32 concurrent: 100 files, a random one per request.
  if [[ -x $OHA ]]; then
    local small=$RAW/download_small.txt
    : >"$small"
    mkdir -p "$WORK/g"
    for i in $(seq -w 0 99); do
      head -c 10240 /dev/urandom >"$WORK/g/g$i"
      curl -sS -f -o /dev/null -T "$WORK/g/g$i" "http://127.0.0.1:$GW_PORT/files/g$i"
      if [[ -n $DUFS_PID ]]; then cp "$WORK/g/g$i" "$DUFS_DIR/g$i"; fi
    done
    secs=$([[ $QUICK == 1 ]] && echo 2 || echo 4); reps=$([[ $QUICK == 1 ]] && echo 1 || echo 3)
    for rep in $(seq "$reps"); do
      "$OHA" -z "${secs}s" -c 32 --rand-regex-url --no-tui --output-format json \
        "http://127.0.0.1:$GW_PORT/files/g[0-9]{2}" >"$WORK/oha.json" 2>"$WORK/oha.err" || true
      oha_line "gateway GET" 32 >>"$small"
      if [[ -n $DUFS_PID ]]; then
        "$OHA" -z "${secs}s" -c 32 --rand-regex-url --no-tui --output-format json \
          "http://127.0.0.1:$DUFS_PORT/g[0-9]{2}" >"$WORK/oha.json" 2>"$WORK/oha.err" || true
        oha_line "dufs GET" 32 >>"$small"
      fi
    done
    # oha does not look at bodies: every file once more, byte for byte.
    local okg=0 okd=0
    for i in $(seq -w 0 99); do
      if curl -sS -f "http://127.0.0.1:$GW_PORT/files/g$i" 2>/dev/null | cmp -s - "$WORK/g/g$i"; then okg=$((okg + 1)); fi
      if [[ -n $DUFS_PID ]] && curl -sS -f "http://127.0.0.1:$DUFS_PORT/g$i" 2>/dev/null | cmp -s - "$WORK/g/g$i"; then okd=$((okd + 1)); fi
    done
    echo "label=verify gateway GET identical=$okg of=100" >>"$small"
    if [[ -n $DUFS_PID ]]; then echo "label=verify dufs GET identical=$okd of=100" >>"$small"; fi
  else
    note "note: oha missing: 10 KiB GETs not measured"
  fi
  stop "$GW_PID"; stop "$GWE_PID"; stop "$STEP_PID"; [[ -n $DUFS_PID ]] && stop "$DUFS_PID"; have_ref && stop "$REF_PID"
  return 0
}
# ------------------------------------------------------------ 5. idle conns
section_idle() {
  echo "== 5. 10,000 idle connections (load $(load))"
  local out=$RAW/idle.txt n=10000 hard
  : >"$out"
  hard=$(ulimit -Hn)
  if [[ $hard != unlimited && $hard -lt $((n + 200)) ]]; then
    n=$((hard - 200)); note "note: hard fd limit $hard: holding $n connections"
  fi
  # Raised for this subshell only: the server and the client both need it.
  (
    ulimit -n "$([[ $hard == unlimited ]] && echo 65536 || echo "$hard")"
    start_step idle
    trap 'stop "$STEP_PID"' EXIT
    "$BIN/idle_conns" --addr "127.0.0.1:$STEP_PORT" --server-pid "$STEP_PID" --conns "$n" --probes 50 >>"$out" || note "idle_conns failed"
    stop "$STEP_PID"
  )
  return 0
}

section_client() {
  echo "== client: step-client beside md5sum, dufs and the course client (load $(load))"
  RESULTS=$RESULTS RAW=$RAW BENCH_QUICK=$QUICK REF_DIR=$REF_DIR BENCH_TMP=$(dirname "$WORK") \
    bash bench/client_bench.sh || note "client_bench failed"
}

section_garage() {
  echo "== garage: Garage's ceiling and the step-server with its storage on Garage"
  RESULTS=$RESULTS BENCH_QUICK=$QUICK bash bench/garage_ceiling.sh "$([[ $QUICK == 1 ]] && echo 1 || echo 3)" ||
    note "garage_ceiling failed"
}

section_coord() {
  echo "== coord: coordination engines for several step-servers (load $(load))"
  RESULTS=$RESULTS BENCH_QUICK=$QUICK bash bench/coord_bench.sh "$([[ $QUICK == 1 ]] && echo 1 || echo 3)" ||
    note "coord_bench failed"
}

section_cluster() {
  echo "== cluster: deploy/cluster, 1 vs 3 step-servers, 1 vs 2 gateways, Garage's ceiling (load $(load))"
  RESULTS=$RESULTS BENCH_QUICK=$QUICK bash bench/cluster_bench.sh "$([[ $QUICK == 1 ]] && echo 1 || echo 3)" ||
    note "cluster_bench failed"
}

section_profile() {
  echo "== profiles: perf on the upload and download paths (load $(load))"
  command -v perf >/dev/null || { note "note: perf missing (apt-get install linux-perf): no profiles"; return 0; }
  OUT=$RESULTS/profiles RAW=$RAW PROFILE_SIZE=$([[ $QUICK == 1 ]] && echo $((256 << 20)) || echo $((1 << 30))) \
    BENCH_TMP=$(dirname "$WORK") bash bench/profile.sh || note "profile.sh failed"
}

for s in $SECTIONS; do "section_$s"; done
echo "load_end=$(load)" >>"$RAW/machine.txt"
echo "== report"
BENCHMARKS_MD=${BENCHMARKS_MD:-$ROOT/BENCHMARKS.md} python3 bench/report.py "$RESULTS"
echo "results: $RESULTS (summary.md, summary.json, runs.csv, *.png, profiles/), ${BENCHMARKS_MD:-BENCHMARKS.md}"
