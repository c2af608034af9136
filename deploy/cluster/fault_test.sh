#!/usr/bin/env bash
# Fault test of the cluster (deploy/cluster/docker-compose.yml): brings up a
# private copy of it (own project name, image tag, state directory and free
# ports) with up.sh, runs real clients through the balancer and against
# single instances while it breaks things, prints one table row per check
#
#     fault | check | result
#
# and removes everything (down.sh) on exit. Exit 0 when every row passed,
# 77 when it cannot run here (no Docker engine, compose, curl or python3),
# 1 otherwise. Run by tests/tests/cluster_faults.rs.
#
# Clients: tests/python/course_style_client.py (one connection, unmodified),
# tests/python/per_block_client.py (a new connection per block), curl, and
# deploy/cluster/stepprobe.py for the races. Faults: a. clients through the
# balancer; b. kill -9 a step-server mid-upload; c. stop a Garage node
# mid-upload; d. kill Redis mid-upload; e. cut a step-server off the store
# network; f. concurrent SAVEs of one key on three instances.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
skip() { printf 'skipped: %s\n' "$*"; exit 77; }
command -v docker >/dev/null 2>&1 || skip "no Docker engine (no docker command)"
docker info >/dev/null 2>&1 || skip "no Docker engine (docker info fails)"
command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 ||
    skip "no docker compose (neither docker-compose nor the v2 plugin)"
command -v curl >/dev/null 2>&1 || skip "curl is not installed"
command -v python3 >/dev/null 2>&1 || skip "python3 is not installed"

T0=$SECONDS
WORK="$(mktemp -d)"
export COMPOSE_PROJECT_NAME="stepfault$$$(date +%s)"
export STEP_CLUSTER_TAG="$COMPOSE_PROJECT_NAME"
export STEP_CLUSTER_STATE="$WORK/state"
. "$HERE/lib.sh"
# Free ports for everything the stack publishes.
pick_free_ports || skip "cannot find free loopback ports"

FRONT=$STEP_CLUSTER_STEP_PORT
HTTP="http://127.0.0.1:$STEP_CLUSTER_HTTP_PORT"
declare -A DIRECT=([step1]=$STEP_CLUSTER_STEP1_PORT [step2]=$STEP_CLUSTER_STEP2_PORT [step3]=$STEP_CLUSTER_STEP3_PORT)
STATS="http://127.0.0.1:$STEP_CLUSTER_STATS_PORT/stats;csv"
COURSE=(python3 "$ROOT/tests/python/course_style_client.py")
PERBLOCK=(python3 "$ROOT/tests/python/per_block_client.py")
PROBE=(python3 "$HERE/stepprobe.py")
# One user for every client: the course clients log in as it by the md5
# rule (open mode), curl with HTTP Basic and the same password, so what one
# uploads the others read. (The public area has no password: it is not
# where course clients can write.)
U=fault-tester
UPW="$(printf %s "$U" | md5sum | cut -d' ' -f1)"
AS_U=(-u "$U:$UPW")

STARTED=0
FAILED=0
ROWS=()
cleanup() {
    local rc=$?
    set +e
    if [[ $STARTED == 1 ]]; then
        if [[ $FAILED != 0 || $rc != 0 ]]; then
            say "logs of the failed run (last lines per service):"
            compose logs --no-color --tail 15 2>&1 | sed 's/^/    /'
        fi
        "$HERE/down.sh" >/dev/null 2>&1 || say "down.sh failed; remove project $PROJECT by hand"
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

LAST=$SECONDS
row() { # row FAULT CHECK RESULT(PASS|FAIL ...) : one table line, remembered
    local line
    line="$(printf '%-24s | %-78s | %s [%d s]' "$1" "$2" "$3" $((SECONDS - LAST)))"
    LAST=$SECONDS
    ROWS+=("$line")
    echo "$line"
    [[ $3 == PASS* ]] || FAILED=$((FAILED + 1))
}
check() { # check FAULT CHECK DETAIL CMD...: PASS when CMD succeeds
    local fault="$1" what="$2" detail="$3"
    shift 3
    if "$@"; then row "$fault" "$what" "PASS${detail:+ ($detail)}"; else row "$fault" "$what" "FAIL${detail:+ ($detail)}"; fi
}
rand_file() { head -c "$2" /dev/urandom >"$WORK/$1"; }
md5() { md5sum "$1" | cut -d' ' -f1; }
field() { # field NAME: from the last JSON line on stdin (clients print one), else None
    python3 -c '
import json, sys
value = None
for line in sys.stdin.read().splitlines():
    try:
        value = json.loads(line).get(sys.argv[1])
    except (ValueError, AttributeError):
        pass
print(value)' "$1"
}
# HAProxy's CSV: field 1 proxy, 2 server, 8 total sessions, 18 status.
server_status() { curl -fsS "$STATS" 2>/dev/null | awk -F, -v p="$1" -v s="$2" '$1==p && $2==s {print $18}'; }
sessions() { curl -fsS "$STATS" 2>/dev/null | awk -F, '$1=="step" && $2 ~ /^step/ {printf "%s=%s ", $2, $8}'; }
wait_for() { # wait_for SECONDS CMD...: poll CMD until it succeeds; 0 or 1
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.25
    done
}
is_status() { [[ "$(server_status "$1" "$2")" == "$3"* ]]; }
healthy() { [[ "$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$(cid "$1")" 2>/dev/null)" == healthy ]]; }
back_in() { # back_in SERVICE: running, healthy and UP in the front balancer
    docker start "$(cid "$1")" >/dev/null 2>&1
    wait_for 90 healthy "$1" && wait_for 30 is_status step "$1" UP
}
same_via_curl() { # same_via_curl KEY FILE: GET through the balanced gateways is FILE
    curl -fsS "${AS_U[@]}" -o "$WORK/got" "$HTTP/files/$1" && cmp -s "$WORK/got" "$2"
}
same_via_step() { # same_via_step PORT KEY FILE
    "${COURSE[@]}" 127.0.0.1 "$1" "$U" download "$2" "$WORK/got" >/dev/null && cmp -s "$WORK/got" "$3"
}

say "fault test: project $COMPOSE_PROJECT_NAME, STEP :$FRONT, HTTP :$STEP_CLUSTER_HTTP_PORT"
STARTED=1
"$HERE/up.sh" >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log" >&2; say "FAIL: up.sh"; exit 1; }
grep -E '^\[cluster\]' "$WORK/up.log" >&2
say "cluster up $((SECONDS - T0)) s after start"
echo
printf '%-24s | %-78s | %s\n' fault check result
printf '%s\n' "-------------------------+--------------------------------------------------------------------------------+-------"

# ------------------------------------------------ a. clients via balancer
F="a. clients via balancer"
rand_file a.bin $((3 * 1024 * 1024 + 17))
out="$("${COURSE[@]}" 127.0.0.1 "$FRONT" "$U" upload a.bin "$WORK/a.bin" 2>&1)"
check "$F" "course client upload 3 MiB via :STEP (client checks the md5)" "$out" test "$(field status <<<"$out")" = 200
check "$F" "course client download via :STEP byte-identical" "" same_via_step "$FRONT" a.bin "$WORK/a.bin"
check "$F" "curl GET of it via :HTTP (balanced gateways) byte-identical" "" same_via_curl a.bin "$WORK/a.bin"
rand_file pb.bin $((2 * 1024 * 1024 + 5))
before="$(sessions)"
out="$("${PERBLOCK[@]}" 127.0.0.1 "$FRONT" "$U" upload pb.bin "$WORK/pb.bin" 2>&1)"
rc=$?
check "$F" "per-block client (new connection per block) 2 MiB via :STEP, md5 right" \
    "$(field connections <<<"$out") connections; sessions before: $before after: $(sessions)" test "$rc" = 0
check "$F" "curl GET of the per-block upload via :HTTP byte-identical" "" same_via_curl pb.bin "$WORK/pb.bin"
rand_file curl.bin $((5 * 1024 * 1024 + 3))
code="$(curl -sS "${AS_U[@]}" -o "$WORK/ans" -w '%{http_code}' -F "file=@$WORK/curl.bin" "$HTTP/upload")"
check "$F" "curl -F upload 5 MiB via :HTTP" "HTTP $code" test "$code" = 201
both_ways() { same_via_curl curl.bin "$WORK/curl.bin" && same_via_step "$FRONT" curl.bin "$WORK/curl.bin"; }
check "$F" "curl upload read back via :HTTP and via :STEP byte-identical" "" both_ways

# ------------------------------------------------ b. kill -9 a step-server
F="b. kill -9 step-server"
rand_file b.bin $((4 * 1024 * 1024))
"${COURSE[@]}" 127.0.0.1 "${DIRECT[step1]}" "$U" upload b.bin "$WORK/b.bin" >"$WORK/b1.out" 2>&1 &
pid=$!
sleep 1.5
mid=no
kill -0 "$pid" 2>/dev/null && mid=yes
docker kill -s KILL "$(cid step1)" >/dev/null
wait "$pid"
rc=$?
check "$F" "course client uploading to step1 directly when killed: fails, no md5" \
    "mid-upload: $mid, exit $rc: $(tail -c 120 "$WORK/b1.out" | tr '\n' ' ')" test "$mid" = yes -a "$rc" != 0
out="$("${COURSE[@]}" 127.0.0.1 "$FRONT" "$U" upload b.bin "$WORK/b.bin" 2>&1)"
check "$F" "its retry (SAVE again) via :STEP lands on another instance, md5 right" "$out" test "$(field status <<<"$out")" = 200
check "$F" "read back from step2 directly byte-identical" "" same_via_step "${DIRECT[step2]}" b.bin "$WORK/b.bin"
rand_file b2.bin $((4 * 1024 * 1024))
"${PERBLOCK[@]}" 127.0.0.1 "$FRONT" "$U" upload b2.bin "$WORK/b2.bin" --retries 100 >"$WORK/b2.out" 2>&1 &
pid=$!
sleep 1.5
mid=no
kill -0 "$pid" 2>/dev/null && mid=yes
docker kill -s KILL "$(cid step2)" >/dev/null
wait "$pid"
rc=$?
out="$(cat "$WORK/b2.out")"
check "$F" "per-block client via :STEP, step2 killed mid-upload: resumes elsewhere, md5 right" \
    "mid-upload: $mid, $(field retries <<<"$out") blocks retried, $(field saves <<<"$out") SAVE" test "$mid" = yes -a "$rc" = 0
check "$F" "read back from step3 directly byte-identical" "" same_via_step "${DIRECT[step3]}" b2.bin "$WORK/b2.bin"
t=$SECONDS
both_back() { back_in step1 && back_in step2; }
check "$F" "step1 and step2 started again: healthy and UP in the balancer" "$((SECONDS - t)) s" both_back

# ------------------------------------------------ c. stop a Garage node
F="c. stop Garage node"
rand_file c1.bin $((4 * 1024 * 1024))
rand_file c2.bin $((3 * 1024 * 1024))
"${COURSE[@]}" 127.0.0.1 "$FRONT" "$U" upload c1.bin "$WORK/c1.bin" >"$WORK/c1.out" 2>&1 &
p1=$!
"${PERBLOCK[@]}" 127.0.0.1 "$FRONT" "$U" upload c2.bin "$WORK/c2.bin" --retries 20 >"$WORK/c2.out" 2>&1 &
p2=$!
sleep 1.5
mid=no
kill -0 "$p1" 2>/dev/null && mid=yes
docker stop -t 5 "$(cid garage3)" >/dev/null
wait "$p1"
r1=$?
wait "$p2"
r2=$?
check "$F" "garage3 stopped mid-upload: course + per-block uploads via :STEP complete, md5 right" \
    "mid-upload: $mid; $(cat "$WORK/c1.out" | tr '\n' ' ') $(field retries <"$WORK/c2.out") block retries" \
    test "$mid" = yes -a "$r1" = 0 -a "$r2" = 0
both_same() { same_via_curl c1.bin "$WORK/c1.bin" && same_via_curl c2.bin "$WORK/c2.bin"; }
check "$F" "both read back via :HTTP byte-identical (garage3 still down)" "" both_same
rand_file c3.bin $((1024 * 1024))
code="$(curl -sS "${AS_U[@]}" -o /dev/null -w '%{http_code}' -F "file=@$WORK/c3.bin" "$HTTP/upload")"
check "$F" "new curl upload while garage3 is down" "HTTP $code" test "$code" = 201
docker start "$(cid garage3)" >/dev/null
rejoined() { local s; s="$(garage 1 status 2>&1)" && [[ $s != *FAILED* ]] && [[ $(grep -c 'zone[123]' <<<"$s") == 3 ]]; }
t=$SECONDS
wait_for 90 rejoined
rc=$?
check "$F" "garage3 started again: rejoins (garage status: 3 healthy nodes, none failed)" "$((SECONDS - t)) s" test "$rc" = 0
check "$F" "after the rejoin, c1 still byte-identical via :HTTP" "" same_via_curl c1.bin "$WORK/c1.bin"

# ------------------------------------------------ d. kill Redis
F="d. kill Redis"
started_at() { local s; for s in step1 step2 step3; do docker inspect -f '{{.State.StartedAt}}' "$(cid $s)"; done; }
before_start="$(started_at)"
rand_file d1.bin $((8 * 1024 * 1024))
rand_file d2.bin $((3 * 1024 * 1024))
"${COURSE[@]}" 127.0.0.1 "$FRONT" "$U" upload d1.bin "$WORK/d1.bin" >"$WORK/d1.out" 2>&1 &
p1=$!
"${PERBLOCK[@]}" 127.0.0.1 "$FRONT" "$U" upload d2.bin "$WORK/d2.bin" >"$WORK/d2.out" 2>&1 &
p2=$!
sleep 1.5
mid=no
kill -0 "$p1" 2>/dev/null && mid=yes
docker kill -s KILL "$(cid redis)" >/dev/null
wait "$p1"
r1=$?
wait "$p2"
r2=$?
s1="$(field status <"$WORK/d1.out" 2>/dev/null)"
s2="$(field status <"$WORK/d2.out" 2>/dev/null)"
# A clear error is a STEP status other than 200 (exit 1); exit 2 would be a
# wrong md5; a completed upload (exit 0) is right only if it finished first.
check "$F" "uploads in flight when Redis dies: a STEP error status, never a wrong md5" \
    "mid-upload: $mid; course: exit $r1 status $s1; per-block: exit $r2 status $s2" \
    test "$mid" = yes -a "$r1" != 2 -a "$r2" != 2 -a "$s1" != None -a "$s2" != None -a "$s1" != 200
rand_file d3.bin 100000
code="$(curl -sS "${AS_U[@]}" -o "$WORK/d3.ans" -w '%{http_code}' -F "file=@$WORK/d3.bin" "$HTTP/upload")"
body="$(head -c 200 "$WORK/d3.ans")"
json_503() { [[ $code == 503 ]] && python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$WORK/d3.ans"; }
check "$F" "curl upload while Redis is down: HTTP 503 with a JSON error" "HTTP $code: $body" json_503
out="$("${COURSE[@]}" 127.0.0.1 "$FRONT" "$U" upload d3.bin "$WORK/d3.bin" 2>&1)"
st="$(field status <<<"$out" 2>/dev/null)"
check "$F" "STEP upload while Redis is down: a STEP error status" "$out" test "$st" != 200 -a "$st" != None
docker start "$(cid redis)" >/dev/null 2>&1
wait_for 60 healthy redis
t=$SECONDS
recovered() { "${COURSE[@]}" 127.0.0.1 "$FRONT" "$U" upload d3.bin "$WORK/d3.bin" >/dev/null 2>&1; }
wait_for 60 recovered
rc=$?
check "$F" "Redis back: uploads via :STEP succeed again by themselves" "$((SECONDS - t)) s after Redis was healthy" test "$rc" = 0
check "$F" "no step-server was restarted" "" test "$before_start" = "$(started_at)"
complete_right() { # complete_right PORT KEY FILE: not complete (404), or complete and right
    local got st m
    got="$("${PROBE[@]}" get 127.0.0.1 "$1" "$U" "$2" 2>&1)" || return 1
    st="$(field status <<<"$got")"
    m="$(field md5 <<<"$got")"
    [[ $st == 404 || ($st == 200 && $m == "$(md5 "$3")") ]]
}
g1="$("${PROBE[@]}" get 127.0.0.1 "$FRONT" "$U" d1.bin 2>&1)"
g2="$("${PROBE[@]}" get 127.0.0.1 "$FRONT" "$U" d2.bin 2>&1)"
both_right() { complete_right "$FRONT" d1.bin "$WORK/d1.bin" && complete_right "$FRONT" d2.bin "$WORK/d2.bin"; }
check "$F" "interrupted keys: not complete, or complete with the right md5" "d1: $g1 d2: $g2" both_right
out="$("${PERBLOCK[@]}" 127.0.0.1 "$FRONT" "$U" upload d2.bin "$WORK/d2.bin" 2>&1)"
check "$F" "the interrupted per-block upload, retried, completes" "$out" test "$(field status <<<"$out")" = 200

# ------------------------------------------------ e. cut a step-server off
F="e. step3 off the store"
NET="$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}' "$(cid step3)" | tr ' ' '\n' | grep '_store$')"
docker network disconnect "$NET" "$(cid step3)"
rand_file e.bin $((512 * 1024))
t=$SECONDS
out="$(timeout 120 "${COURSE[@]}" 127.0.0.1 "${DIRECT[step3]}" "$U" upload e.bin "$WORK/e.bin" 2>&1)"
st="$(field status <<<"$out" 2>/dev/null)"
check "$F" "upload to step3 directly: a STEP error status" "after $((SECONDS - t)) s: $(tr '\n' ' ' <<<"$out" | tail -c 160)" \
    test -n "$st" -a "$st" != 200 -a "$st" != None
t=$SECONDS
wait_for 30 is_status step step3 DOWN
rc=$?
check "$F" "the balancer's health check takes step3 out" "$((SECONDS - t)) s, status $(server_status step step3)" test "$rc" = 0
ok=0
for i in 1 2 3 4 5 6; do
    rand_file "e$i.bin" 70000
    "${COURSE[@]}" 127.0.0.1 "$FRONT" "$U" upload "e$i.bin" "$WORK/e$i.bin" >/dev/null 2>&1 && ok=$((ok + 1))
done
check "$F" "6 uploads via :STEP meanwhile all succeed" "$ok/6" test "$ok" = 6
check "$F" "the key tried on step3 is not complete anywhere (or complete and right)" \
    "$("${PROBE[@]}" get 127.0.0.1 "${DIRECT[step1]}" "$U" e.bin 2>&1)" \
    complete_right "${DIRECT[step1]}" e.bin "$WORK/e.bin"
docker network connect --alias step3 "$NET" "$(cid step3)"
t=$SECONDS
wait_for 60 is_status step step3 UP
rc=$?
check "$F" "reconnected: step3 back in the balancer" "$((SECONDS - t)) s" test "$rc" = 0
out="$("${COURSE[@]}" 127.0.0.1 "${DIRECT[step3]}" "$U" upload e.bin "$WORK/e.bin" 2>&1)"
check "$F" "upload to step3 directly works again" "$out" test "$(field status <<<"$out")" = 200

# ------------------------------------------------ f. races across instances
F="f. concurrent SAVEs"
PORTS="${DIRECT[step1]},${DIRECT[step2]},${DIRECT[step3]}"
ok=0
detail=""
for r in 1 2 3 4 5; do
    if out="$("${PROBE[@]}" race-file 127.0.0.1 "$PORTS" "$U" "race-$r.bin" $((200 * 1024 + r)) 2>&1)"; then
        ok=$((ok + 1))
    else
        detail="$detail round $r: $(tail -c 300 <<<"$out")"
    fi
done
check "$F" "FILE: 3 instances SAVE+upload one key at once: one md5, right, kept, later SAVE 402" \
    "$ok/5 rounds${detail:+;$detail}" test "$ok" = 5
ok=0
detail=""
for r in 1 2 3 4 5; do
    if out="$("${PROBE[@]}" race-data 127.0.0.1 "$PORTS" "$U" "race-data-$r" 2>&1)"; then
        ok=$((ok + 1))
    else
        detail="$detail round $r: $(tail -c 300 <<<"$out")"
    fi
done
check "$F" "DATA: 3 instances SAVE one key at once: one 200, two 402, all GET the winner" \
    "$ok/5 rounds${detail:+;$detail}" test "$ok" = 5

echo
say "$(( ${#ROWS[@]} - FAILED ))/${#ROWS[@]} checks passed in $((SECONDS - T0)) s"
[[ $FAILED == 0 ]]
