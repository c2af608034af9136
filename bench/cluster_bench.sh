#!/usr/bin/env bash
# The cluster of deploy/cluster/ measured in one run (issue 16, "Benchmarks"):
# Garage's own ceiling through the cluster's S3 balancer, then STEP through
# the front balancer with 3 step-servers and with 1, then HTTP through it
# with 2 gateways and with 1.
#
#   bench/cluster_bench.sh [RUNS]        # default 3 runs of each 10 KiB series
#   BENCH_QUICK=1 bench/cluster_bench.sh # 1 run, fewer and shorter
#
# Brings up a private copy of the cluster with deploy/cluster/up.sh
# (COMPOSE_PROJECT_NAME=stepbench, STEP_CLUSTER_TAG=stepbench, state under
# BENCH_TMP, every published port a free one) and removes it with down.sh
# on exit, also on failure. Series (every upload checked: the md5 the server
# answers must be the file's; a failed upload counts as an error, never as
# throughput):
#   ceiling     s3_ceiling through the S3 balancer (127.0.0.1, the
#               step-servers' endpoint): one 100 MiB multipart PUT per run
#               (8 MiB parts, 8 in flight) into a bucket of its own, and
#               10 KiB PUTs with 32 in flight
#   step-big    small_native: 3 clients, each CLUSTER_BIG_EACH (3) uploads of
#               100 MiB in 1 MiB blocks, 8 in flight
#   step-small  small_native: 32 clients uploading 10 KiB files for
#               CLUSTER_SMALL_SECS (12) s
#   http-big    3 concurrent curl -T, CLUSTER_HTTP_BIG_EACH (2) PUTs of
#               100 MiB each (answer's md5 and the file's ETag checked)
#   http-small  bench/small_puts.py: CLUSTER_SMALL_COUNT (1500) 10 KiB PUTs
#               over 32 connections
# Configurations: 3 step-servers, then 1 (two stopped with compose stop;
# measured once HAProxy's stats mark them DOWN), then 3 again (10 KiB only);
# 2 gateways, then 1 (gw2 stopped the same way), then 2 again (10 KiB only).
# CPU: top and docker stats once during the step-big, step-small, http-big
# and http-small runs with everything up.
#
# CLUSTER_SERIES picks a subset ("ceiling step-big step-small http-small
# http-big", the default); with CLUSTER_APPEND=1 its lines are added to an
# existing raw/cluster.txt (a series measured again in a second bring-up,
# marked as such in the table's header).
#
# Writes $RESULTS/raw/cluster.txt (key=value lines), the top/docker stats
# snapshots (raw/cluster_cpu_*.txt) and, by bench/cluster_report.py, the
# tables under the marker line of $RESULTS/cluster.md. Exits 0 with a note
# when Docker, compose, curl or python3 is missing. Needs about 20 GB free
# (100 MiB is stored 3 times, and twice by the step-servers: staged blocks,
# then the file; Garage frees deleted blocks after 10 minutes): a 100 MiB
# series that would leave less than CLUSTER_MIN_FREE_GB (8) is skipped with a note.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
QUICK=${BENCH_QUICK:-0}
RUNS=${1:-$([[ $QUICK == 1 ]] && echo 1 || echo 3)}
BIG=$((100 << 20))
BIG_EACH=${CLUSTER_BIG_EACH:-$([[ $QUICK == 1 ]] && echo 1 || echo 3)}
HTTP_BIG_EACH=${CLUSTER_HTTP_BIG_EACH:-$([[ $QUICK == 1 ]] && echo 1 || echo 2)}
SMALL_SECS=${CLUSTER_SMALL_SECS:-$([[ $QUICK == 1 ]] && echo 5 || echo 12)}
SMALL_COUNT=${CLUSTER_SMALL_COUNT:-$([[ $QUICK == 1 ]] && echo 500 || echo 1500)}
MIN_FREE_GB=${CLUSTER_MIN_FREE_GB:-8}
SERIES=" ${CLUSTER_SERIES:-ceiling step-big step-small http-small http-big} "
APPEND=${CLUSTER_APPEND:-0}
want() { [[ $SERIES == *" $1 "* ]]; }
RESULTS=${RESULTS:-$ROOT/bench/results}
RAW=$RESULTS/raw
OUT=$RAW/cluster.txt
mkdir -p "$RAW"

note() { echo "note: $*" | tee -a "$RAW/notes.txt" >&2; }
for tool in docker curl python3; do
  command -v "$tool" >/dev/null 2>&1 || { note "cluster_bench: $tool missing; skipped"; exit 0; }
done
docker info >/dev/null 2>&1 || { note "cluster_bench: no Docker engine answers; skipped"; exit 0; }
command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 ||
  { note "cluster_bench: no docker compose; skipped"; exit 0; }

if [[ $APPEND != 1 ]]; then
  : >"$OUT"
  rm -f "$RAW"/cluster_cpu_*.txt
fi
echo "== building s3_ceiling and small_native (release)" >&2
cargo build --release -q -p step-bench --bin s3_ceiling --bin small_native
BIN=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release

WORK=$(mktemp -d "${BENCH_TMP:-/tmp}/clusterbench.XXXXXX")
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-stepbench}
export STEP_CLUSTER_TAG=${STEP_CLUSTER_TAG:-stepbench}
export STEP_CLUSTER_STATE=${STEP_CLUSTER_STATE:-$WORK/state}
# compose, cid SERVICE, garage N ARGS..., pick_free_ports (and say/die).
. "$ROOT/deploy/cluster/lib.sh"
pick_free_ports || die "cannot find free loopback ports"

STARTED=0
SAMPLER=
cleanup() {
  local rc=$?
  set +e
  [[ -n $SAMPLER ]] && { kill "$SAMPLER" 2>/dev/null; wait "$SAMPLER" 2>/dev/null; }
  if [[ $STARTED == 1 ]]; then
    if [[ $rc != 0 ]]; then
      say "logs of the failed run (last lines per service):"
      compose logs --no-color --tail 10 2>&1 | sed 's/^/    /' >&2
    fi
    "$ROOT/deploy/cluster/down.sh" >"$WORK/down.log" 2>&1 ||
      { cat "$WORK/down.log" >&2; say "down.sh failed: remove project $PROJECT by hand"; }
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

load() { cut -d' ' -f1-3 /proc/loadavg | tr ' ' ,; }
free_gb() { df -BG --output=avail "$1" | tail -1 | tr -dc 0-9; }
record() { tee -a "$OUT" >&2; }
STATS="http://127.0.0.1:$STEP_CLUSTER_STATS_PORT/stats;csv"
# HAProxy's CSV: field 1 proxy, 2 server, 18 status (UP, DOWN, MAINT, "DOWN 1/2"...).
status() { curl -fsS "$STATS" 2>/dev/null | awk -F, -v p="$1" -v s="$2" '$1==p && $2==s {print $18}'; }
wait_status() { # wait_status PROXY SERVER up|down SECONDS: 0 once it is, 1 at the deadline
  local deadline=$((SECONDS + $4)) st
  while ((SECONDS < deadline)); do
    st=$(status "$1" "$2")
    if [[ $3 == up && $st == UP ]] || [[ $3 == down && ($st == DOWN* || $st == MAINT*) ]]; then return 0; fi
    sleep 0.25
  done
  return 1
}
healthy() { [[ "$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$(cid "$1")" 2>/dev/null)" == healthy ]]; }
stop_services() { # stop_services PROXY SERVICE...: stopped, and out of the front balancer
  local proxy=$1 t=$SECONDS s
  shift
  compose stop "$@" >/dev/null 2>&1 || die "compose stop $* failed"
  for s in "$@"; do wait_status "$proxy" "$s" down 60 || die "HAProxy still shows $s as $(status "$proxy" "$s")"; done
  say "stopped $*: DOWN in the balancer after $((SECONDS - t)) s"
}
start_services() { # start_services PROXY SERVICE...: running, healthy, UP in the balancer
  local proxy=$1 t=$SECONDS s deadline
  shift
  compose start "$@" >/dev/null 2>&1 || die "compose start $* failed"
  deadline=$((SECONDS + 120))
  for s in "$@"; do
    until healthy "$s"; do ((SECONDS < deadline)) || die "$s not healthy again"; sleep 0.25; done
    wait_status "$proxy" "$s" up 60 || die "HAProxy shows $s as $(status "$proxy" "$s")"
  done
  say "started $*: healthy and UP after $((SECONDS - t)) s"
}
enough_disk() { # enough_disk BYTES_STORED SERIES: room for them (x3 copies, x2 staging) above the floor
  local need_gb=$(($1 * 6 / 1000000000 + MIN_FREE_GB)) have
  have=$(free_gb /var/lib/docker 2>/dev/null || free_gb /)
  if ((have < need_gb)); then
    note "cluster_bench: $2 skipped: ${have} GB free, it needs about ${need_gb} GB"
    echo "label=$2 skipped=1 free_gb=$have need_gb=$need_gb" >>"$OUT"
    return 1
  fi
}

# CPU shares once during a run: top over 2 s (processes by name, host-wide,
# other users of the machine included) and docker stats (per container).
sample_cpu() { # sample_cpu NAME DELAY: in the background, while a run goes on
  (
    sleep "$2"
    top -b -n2 -d2 -w512 >"$RAW/cluster_cpu_$1.top.txt" 2>&1
    docker stats --no-stream --format '{{.Name}} {{.CPUPerc}} {{.MemUsage}}' $(compose ps -q) \
      >"$RAW/cluster_cpu_$1.docker.txt" 2>&1
  ) &
  SAMPLER=$!
}
cpu_lines() { # cpu_lines NAME: the samples of NAME as key=value lines
  [[ -n $SAMPLER ]] || return 0
  wait "$SAMPLER" 2>/dev/null || true
  SAMPLER=
  python3 bench/cluster_cpu.py "$1" "$RAW/cluster_cpu_$1.top.txt" "$RAW/cluster_cpu_$1.docker.txt" \
    "$PROJECT" "$(nproc)" | record
}

if [[ $APPEND == 1 ]]; then
  echo "# rerun_date=$(date -u +%FT%TZ) rerun_series=$(echo $SERIES | tr ' ' ,) rerun_load_start=$(load)" >>"$OUT"
else {
  echo "# cluster date=$(date -u +%FT%TZ) nproc=$(nproc) mem_gib=$(awk '/MemTotal/ {printf "%.1f", $2/1048576}' /proc/meminfo) load_start=$(load) runs=$RUNS quick=$QUICK"
  echo "# cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//' | tr ' ' _) kernel=$(uname -r) docker=$(docker version -f '{{.Server.Version}}' 2>/dev/null | tr ' ' _) garage=$("$(command -v garage || echo "$HOME/.cargo/bin/garage")" --version 2>/dev/null | head -1 | cut -d' ' -f2)"
} >>"$OUT"
fi

# ------------------------------------------------------------------ up
echo "== cluster up (deploy/cluster/up.sh, project $PROJECT; load $(load))" >&2
STARTED=1
t=$SECONDS
"$ROOT/deploy/cluster/up.sh" >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log" >&2; die "up.sh failed"; }
grep -E '^\[cluster\]' "$WORK/up.log" >&2 || true
[[ $APPEND == 1 ]] || echo "# up_secs=$((SECONDS - t)) load_after_up=$(load)" >>"$OUT"
STEP_ADDR=127.0.0.1:$STEP_CLUSTER_STEP_PORT
HTTP=http://127.0.0.1:$STEP_CLUSTER_HTTP_PORT

# ------------------------------------------------------------ ceiling
echo "== Garage's ceiling through the S3 balancer (load $(load))" >&2
KEY_ID=$(sed -n 's/^AWS_ACCESS_KEY_ID=//p' "$STEP_CLUSTER_STATE/s3.env")
# A bucket of its own, so nothing here shows in the step-servers' bucket.
garage 1 bucket create ceiling >/dev/null 2>&1 || true
garage 1 bucket allow --read --write ceiling --key "$KEY_ID" >/dev/null || die "garage bucket allow ceiling failed"
ceiling() { # ceiling ARGS...: s3_ceiling with the cluster's key, failures recorded
  (
    set -a
    . "$STEP_CLUSTER_STATE/s3.env"
    set +a
    AWS_ENDPOINT_URL=http://127.0.0.1:$STEP_CLUSTER_S3_PORT AWS_REGION=garage AWS_ALLOW_HTTP=true \
      "$BIN/s3_ceiling" --bucket ceiling "$@"
  ) 2>"$WORK/ceiling.err" || echo "label=ceiling-error error=$(tail -c 200 "$WORK/ceiling.err" | tr -s ' \n=' '_')"
}
if want ceiling && enough_disk $((RUNS * BIG)) ceiling-big; then
  ceiling --mode big --label ceiling-big --size "$BIG" --part-size $((8 << 20)) --concurrency 8 --runs "$RUNS" |
    sed 's/^label=ceiling-big /label=ceiling-big config=garage-3-nodes /' | record
fi
want ceiling && ceiling --mode small --label ceiling-small --size 10240 --count $((QUICK == 1 ? 300 : 1000)) --concurrency 32 --runs "$RUNS" |
  sed 's/^label=ceiling-small /label=ceiling-small config=garage-3-nodes /' | record

# ---------------------------------------------------------------- STEP
step_big() { # step_big CONFIG [CPU_SAMPLE]
  enough_disk $((3 * BIG_EACH * BIG)) "step-big|$1" || return 0
  [[ -n ${2:-} ]] && sample_cpu "$2" 5
  "$BIN/small_native" --addr "$STEP_ADDR" --concurrency 3 --size "$BIG" --count "$BIG_EACH" \
    --block-size $((1 << 20)) --window 8 --timeout 900 --user "cb$RANDOM" >"$WORK/sn.out" 2>&1 || true
  native_line step-big "$1"
  [[ -n ${2:-} ]] && cpu_lines "$2"
  return 0
}
step_small() { # step_small CONFIG RUN [CPU_SAMPLE]
  [[ -n ${3:-} ]] && sample_cpu "$3" 3
  "$BIN/small_native" --addr "$STEP_ADDR" --concurrency 32 --size 10240 --seconds "$SMALL_SECS" \
    --user "cs$RANDOM" >"$WORK/sn.out" 2>&1 || true
  native_line step-small "$1" "$2"
  [[ -n ${3:-} ]] && cpu_lines "$3"
  return 0
}
native_line() { # native_line SERIES CONFIG [RUN]: small_native's line, its first error folded in
  local line err
  line=$(grep -m1 '^small_native:' "$WORK/sn.out" || true)
  err=$(sed -n 's/^  first error: //p' "$WORK/sn.out" | tr -s ' =\n' '_:_' | cut -c1-150) || true
  if [[ -z $line ]]; then
    echo "label=$1 config=$2 run=${3:-1} errors=1 first_error=$(tail -c 150 "$WORK/sn.out" | tr -s ' \n=' '_')" | record
  else
    echo "label=$1 config=$2 run=${3:-1} ${line#small_native: }${err:+ first_error=$err} load=$(load)" | record
  fi
}

if want step-big || want step-small; then
  echo "== STEP via the front balancer, 3 step-servers (load $(load))" >&2
  want step-big && step_big 3-step-servers step-big
  if want step-small; then
    for run in $(seq "$RUNS"); do step_small 3-step-servers "$run" "$([[ $run == 1 ]] && echo step-small)"; done
  fi
  stop_services step step2 step3
  echo "== STEP via the front balancer, 1 step-server (load $(load))" >&2
  want step-big && step_big 1-step-server
  if want step-small; then
    for run in $(seq "$RUNS"); do step_small 1-step-server "$run"; done
  fi
  start_services step step2 step3
  if want step-small; then
    echo "== STEP, 3 step-servers again (load $(load))" >&2
    step_small 3-step-servers-again 1
  fi
fi

# ---------------------------------------------------------------- HTTP
http_big() { # http_big CONFIG [CPU_SAMPLE]: 3 curl -T at once, HTTP_BIG_EACH files each
  local n=$((3 * HTTP_BIG_EACH)) i w t0 t1
  enough_disk $((n * BIG)) "http-big|$1" || return 0
  mkdir -p "$WORK/big"
  # Distinct random files (Garage would not store a repeated block twice),
  # made and hashed before the clock starts.
  for i in $(seq "$n"); do
    head -c "$BIG" /dev/urandom >"$WORK/big/f$i"
    md5sum "$WORK/big/f$i" | cut -d' ' -f1 >"$WORK/big/f$i.md5"
  done
  local tag="hb$RANDOM"
  [[ -n ${2:-} ]] && sample_cpu "$2" 5
  t0=$(date +%s.%N)
  local workers=()
  for w in 1 2 3; do
    (
      for k in $(seq "$HTTP_BIG_EACH"); do
        i=$(((w - 1) * HTTP_BIG_EACH + k))
        if r=$(curl -sS --max-time 900 -o "$WORK/big/a$i" -w '%{http_code} %{time_total}' \
          -T "$WORK/big/f$i" "$HTTP/files/$tag-$i" 2>"$WORK/big/e$i"); then :; else r="000 0"; fi
        if [[ ${r%% *} == 201 ]] && grep -q "\"md5\":\"$(cat "$WORK/big/f$i.md5")\"" "$WORK/big/a$i"; then
          echo "ok ${r#* }"
        else
          echo "err HTTP_${r%% *}:$(head -c 100 "$WORK/big/a$i" "$WORK/big/e$i" 2>/dev/null | tr -s ' \n=' '_')"
        fi
      done >"$WORK/big/w$w"
    ) &
    workers+=($!)
  done
  wait "${workers[@]}" || true
  t1=$(date +%s.%N)
  [[ -n ${2:-} ]] && cpu_lines "$2"
  # ETag of every file, after the clock: the md5 the gateway serves it with.
  local etag_ok=0 headers
  for i in $(seq "$n"); do
    headers=$(curl -fsSI "$HTTP/files/$tag-$i" 2>/dev/null | tr -d '\r') || true
    if [[ ${headers,,} == *"etag: \"$(cat "$WORK/big/f$i.md5")\""* ]]; then
      etag_ok=$((etag_ok + 1))
    fi
    curl -fsS -o /dev/null -X DELETE "$HTTP/files/$tag-$i" 2>/dev/null || true
  done
  cat "$WORK"/big/w? >"$WORK/big/all"
  python3 - "$1" "$BIG" "$t0" "$t1" "$etag_ok" "$(load)" "$WORK/big/all" <<'PY' | record
import sys
config, size, t0, t1, etag_ok, load = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5], sys.argv[6]
ok, errs = [], []
for line in open(sys.argv[7]):
    kind, _, rest = line.strip().partition(" ")
    (ok.append(float(rest)) if kind == "ok" else errs.append(rest))
ok.sort()
pct = lambda q: ok[min(len(ok) - 1, int(q * len(ok)))] * 1000 if ok else float("nan")
secs = t1 - t0
print(f"label=http-big config={config} run=1 concurrency=3 size={size} uploads={len(ok)} errors={len(errs)} "
      f"elapsed_s={secs:.1f} mb_per_s={len(ok) * size / secs / 1e6:.1f} req_per_s={len(ok) / secs:.2f} "
      f"p50_ms={pct(0.5):.0f} p99_ms={pct(0.99):.0f} etag_ok={etag_ok} load={load}"
      + (f" first_error={errs[0][:150]}" if errs else ""))
PY
  rm -rf "$WORK/big"
}
http_small() { # http_small CONFIG RUN [CPU_SAMPLE]
  [[ -n ${3:-} ]] && sample_cpu "$3" 3
  python3 bench/small_puts.py "$HTTP" --count "$SMALL_COUNT" --size 10240 --concurrency 32 \
    --label "hs$RANDOM$RANDOM" >"$WORK/sp.out" 2>&1 || true
  [[ -n ${3:-} ]] && cpu_lines "$3"
  local line
  line=$(grep -m1 '^label=' "$WORK/sp.out" || true)
  if [[ -z $line ]]; then
    echo "label=http-small config=$1 run=$2 errors=1 first_error=$(tail -c 150 "$WORK/sp.out" | tr -s ' \n=' '_')" | record
  else
    echo "label=http-small config=$1 run=$2 ${line#label=* } load=$(load)" | record
  fi
}

if want http-small || want http-big; then
  echo "== HTTP via the front balancer, 2 gateways (load $(load))" >&2
  if want http-small; then
    for run in $(seq "$RUNS"); do http_small 2-gateways "$run" "$([[ $run == 1 ]] && echo http-small)"; done
  fi
  want http-big && http_big 2-gateways http-big
  stop_services http gw2
  echo "== HTTP via the front balancer, 1 gateway (load $(load))" >&2
  if want http-small; then
    for run in $(seq "$RUNS"); do http_small 1-gateway "$run"; done
  fi
  want http-big && http_big 1-gateway
  start_services http gw2
  if want http-small; then
    echo "== HTTP, 2 gateways again (load $(load))" >&2
    http_small 2-gateways-again 1
  fi
fi

echo "# $([[ $APPEND == 1 ]] && echo rerun_)load_end=$(load) $([[ $APPEND == 1 ]] && echo rerun_)date_end=$(date -u +%FT%TZ) free_gb_end=$(free_gb /)" >>"$OUT"
python3 bench/cluster_report.py "$RESULTS"
echo "== results: $OUT, $RESULTS/cluster.md; tearing the cluster down" >&2
