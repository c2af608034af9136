#!/usr/bin/env bash
# Two builds of the server side by side on the storage rows: the native
# upload of 100 MiB and 1 GiB, and 10 KiB files (native and through the
# gateway), on the local disk and on Garage. Each repetition runs A then B,
# the next B then A (so drift of a shared machine falls on both; an even
# REPS gives each build each place equally often), and the medians per row
# and build are printed at the end.
#
#   bench/ab_store.sh A_BIN_DIR B_BIN_DIR [REPS]
#
# A_BIN_DIR, B_BIN_DIR: directories holding release builds of step-server,
# gateway, step-client, step-bench and small_native (cargo build --release
# -p step-server -p gateway -p step-client -p step-bench). REPS defaults to 6
# (the 1 GiB row runs min(REPS, AB_BIG_REPS=3) times). AB_ROWS="cli100MiB small" runs only
# those rows, AB_GARAGE=0 skips Garage. Raw lines go to
# ${RESULTS:-bench/results}/raw/ab_store.txt. Garage rows need garage
# (tests/garage/install.sh) and are skipped with a note without it.
set -euo pipefail
cd "$(dirname "$0")/.."
A=$(cd "$1" && pwd); B=$(cd "$2" && pwd); REPS=${3:-6}
RESULTS=${RESULTS:-$PWD/bench/results}
mkdir -p "$RESULTS/raw"
OUT=$RESULTS/raw/ab_store.txt
: >"$OUT"
WORK=$(mktemp -d "${BENCH_TMP:-/tmp}/ab_store.XXXXXX")
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

GARAGE=$(command -v garage || echo "${CARGO_HOME:-$HOME/.cargo}/bin/garage")
source bench/garage.sh
wait_http() { for _ in $(seq 200); do curl -sf -o /dev/null "$1" && return 0; sleep 0.05; done; echo "no answer from $1" >&2; return 1; }
bin() { if [[ $1 == A ]]; then echo "$A"; else echo "$B"; fi; }

# start BUILD NAME STORAGE: a step-server (and a gateway in front of it);
# sets PORT_<BUILD>_<NAME> and GW_<BUILD>_<NAME>.
start() {
  local b=$1 name=$2 storage=$3 port gw anon=()
  port=$(free_port)
  # The gateway's 10 KiB PUTs are anonymous: a server that decides who may
  # write is told to let anonymous callers write (loopback only here).
  if "$(bin "$b")/step-server" --help 2>&1 | grep -q -- "--anonymous"; then anon=(--anonymous write); fi
  "$(bin "$b")/step-server" --ip 127.0.0.1 "${anon[@]}" --port "$port" --data-dir "$WORK/$b-$name" \
    --storage "$storage" --token-secret "ab-$$" --log error >"$WORK/$b-$name.log" 2>&1 &
  PIDS+=($!)
  printf -v "SPID_${b}_$name" '%s' "$!"
  wait_port "$port" "$!"
  gw=$(free_port)
  "$(bin "$b")/gateway" --bind 127.0.0.1 --port "$gw" --backend "127.0.0.1:$port" \
    --spool-dir "$WORK" --log error >"$WORK/$b-$name-gw.log" 2>&1 &
  PIDS+=($!)
  printf -v "GPID_${b}_$name" '%s' "$!"
  wait_http "http://127.0.0.1:$gw/readyz"
  printf -v "PORT_${b}_$name" '%s' "$port"
  printf -v "GW_${b}_$name" '%s' "$gw"
}

# CPU seconds (user + system) the processes PIDS have used so far.
cpu_of() {
  local p t=0
  for p in "$@"; do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  awk -v t="$t" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.3f", t / hz}'
}

# One measurement of ROW on build B against the servers called NAME, with
# the CPU seconds the server (and, for the gateway row, the gateway) spent
# on it appended as cpu_s=: less sensitive to a busy machine than the time.
measure() {
  local b=$1 name=$2 row=$3 v pids before after line
  v="SPID_${b}_$name"; pids=(${!v})
  if [[ $row == gw-small ]]; then v="GPID_${b}_$name"; pids+=(${!v}); fi
  # What the previous run left dirty is written out first, so no run pays
  # for the one before it.
  sync
  before=$(cpu_of "${pids[@]}")
  line=$(measure_row "$@")
  after=$(cpu_of "${pids[@]}")
  echo "$line cpu_s=$(awk -v a="$before" -v b="$after" 'BEGIN {printf "%.3f", b - a}')"
}

measure_row() {
  local b=$1 name=$2 row=$3 port gw v
  v="PORT_${b}_$name"; port=${!v}
  v="GW_${b}_$name"; gw=${!v}
  case $row in
    100MiB|1GiB)
      local size=$((100 << 20)); [[ $row == 1GiB ]] && size=$((1 << 30))
      "$(bin "$b")/step-bench" --addr "127.0.0.1:$port" --size "$size" --window 16 \
        --block-size 1048576 --runs 1 --timeout 120 --label "$b|$name|native $row w16 1MiB" ;;
    cli100MiB)
      local t0 t1 key=cli-$RANDOM
      t0=$(date +%s.%N)
      (cd "$WORK" && "$(bin "$b")/step-client" --quiet --server-ip 127.0.0.1 --port "$port" \
        --id ab --key "$key" -f "$WORK/file-100MiB" >/dev/null 2>&1)
      t1=$(date +%s.%N)
      echo "label=$b|$name|step-client command 100MiB mb_per_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", 104857600/(b-a)/1e6}')"
      "$(bin "$b")/step-client" --quiet --server-ip 127.0.0.1 --port "$port" --id ab delete "$key" >/dev/null 2>&1 || true ;;
    small)
      "$(bin "$b")/small_native" --addr "127.0.0.1:$port" --concurrency 32 --size 10240 --seconds 4 \
        --user "ab$RANDOM" | head -1 | sed -E "s/^small_native:/label=$b|$name|native 10KiB c32/" ;;
    gw-small)
      # Its label names the files: plain letters here, the row's name after.
      python3 bench/small_puts.py "http://127.0.0.1:$gw" --count 2000 --size 10240 --concurrency 32 \
        --label "ab$b$RANDOM" | sed -E "s/^label=ab[AB][0-9]+ /label=$b|$name|gateway 10KiB c32 /" ;;
  esac
}

rows_for() {
  local rows
  case $1 in
    disk) rows="100MiB 1GiB cli100MiB small gw-small" ;;
    garage) rows="100MiB small gw-small" ;;
  esac
  # AB_ROWS="cli100MiB small": only those rows.
  if [[ -n ${AB_ROWS:-} ]]; then
    local r keep=
    for r in $rows; do [[ " $AB_ROWS " == *" $r "* ]] && keep+="$r "; done
    rows=$keep
  fi
  echo "$rows"
}

head -c $((100 << 20)) /dev/urandom >"$WORK/file-100MiB"
places=(disk)
start A disk disk
start B disk disk
if [[ ${AB_GARAGE:-1} == 0 ]]; then
  echo "note: AB_GARAGE=0: the Garage rows are not measured" >&2
elif [[ -x $GARAGE ]]; then
  start_garage garage false
  PIDS+=("$G_PID")
  start A garage s3://bench/a
  start B garage s3://bench/b
  places+=(garage)
else
  echo "note: no garage ($GARAGE): the Garage rows are not measured" | tee -a "$OUT" >&2
fi

echo "# ab_store $(date -u +%FT%TZ) A=$A B=$B reps=$REPS cores=$(nproc) load=$(cut -d' ' -f1-3 /proc/loadavg | tr ' ' ,)" | tee -a "$OUT"
for rep in $(seq "$REPS"); do
  order="A B"; (( rep % 2 == 0 )) && order="B A"
  for place in "${places[@]}"; do
    for row in $(rows_for "$place"); do
      [[ $row == 1GiB ]] && (( rep > ${AB_BIG_REPS:-3} )) && continue
      for b in $order; do
        measure "$b" "$place" "$row" | tee -a "$OUT" || echo "label=$b|$place|$row error=failed" | tee -a "$OUT"
      done
    done
  done
done
echo "# load at end $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT"

python3 - "$OUT" <<'PY'
import collections, re, statistics, sys
vals = collections.defaultdict(list)
for line in open(sys.argv[1]):
    m = re.match(r"label=([AB])\|([^|]+)\|(.*?) (?:run|op|concurrency|mb_per_s|size)=", line)
    if not m:
        continue
    kv = dict(re.findall(r"(\w+)=(\S+)", line))
    if "error" in kv:
        continue
    key = "req_per_s" if "req_per_s" in kv else "mb_per_s"
    if key in kv:
        vals[(m.group(2), m.group(3), key)].append((m.group(1), float(kv[key])))
    # Server CPU per file for the small rows, per run for the large ones.
    files = kv.get("uploads") or kv.get("count")
    if "cpu_s" in kv and files:
        vals[(m.group(2), m.group(3), "cpu ms/file")].append((m.group(1), float(kv["cpu_s"]) * 1000 / float(files)))
    elif "cpu_s" in kv:
        vals[(m.group(2), m.group(3), "cpu s/run")].append((m.group(1), float(kv["cpu_s"])))
print("(cpu: lower is better; the rest: higher is better)")
print("| row | A median | B median | B/A | runs |")
print("|---|---|---|---|---|")
for (place, row, key), got in sorted(vals.items()):
    a = [v for b, v in got if b == "A"]
    b = [v for b, v in got if b == "B"]
    if a and b:
        ma, mb = statistics.median(a), statistics.median(b)
        print(f"| {place}: {row} ({key}) | {ma:.3f} | {mb:.3f} | {mb / ma:.3f} | {len(a)}+{len(b)} |")
PY
