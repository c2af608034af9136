#!/usr/bin/env bash
# Issue 7's big concurrency run, both doors at once: CLIENTS native STEP
# clients (bench/src/bin/stress_native.rs) and CLIENTS HTTP clients (curl
# through the gateway) upload UPLOADS files each to one step-server at the
# same time; every file is then read back and compared. Loopback only; every
# loop is bounded; exits non-zero on any error that is not designed.
#
#   bench/stress_mixed.sh [CLIENTS] [UPLOADS]     (default 200 50: 100 native + 100 HTTP)
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${1:-200}
UPLOADS=${2:-50}
DEADLINE=${DEADLINE:-900}
NATIVE=$((CLIENTS / 2)); HTTP=$((CLIENTS - NATIVE))
cargo build --release -q -p step-server -p gateway -p step-bench
BIN=$PWD/target/release
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ulimit -n 65536 2>/dev/null || true

SPORT=$(free_port); HPORT=$(free_port)
"$BIN/step-server" --ip 127.0.0.1 --anonymous write --port "$SPORT" --data-dir "$WORK/store" --token-secret "mixed-$$-$RANDOM" --log warn >"$WORK/server.log" 2>&1 &
PIDS+=($!)
"$BIN/gateway" --bind 127.0.0.1 --port "$HPORT" --backend "127.0.0.1:$SPORT" --pool-size 64 --pool-wait-ms 30000 --log warn >"$WORK/gateway.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$HPORT/readyz" && break; sleep 0.1; done

# One HTTP client: UPLOADS files through the gateway, each checked by the md5
# in the answer and by downloading it back.
http_client() {
  local c=$1 errors=0 n f key want got
  local token
  token=$(curl -sf -H 'content-type: application/json' -d "{\"username\":\"http$c\"}" "http://127.0.0.1:$HPORT/login" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])') || { echo "client $c: login failed"; return 1; }
  for n in $(seq "$UPLOADS"); do
    f="$WORK/h-$c-$n"; key="h-$c-$n"
    head -c $(( (c * 7919 + n * 104729) % 262144 )) /dev/urandom > "$f"
    want=$(md5sum "$f" | cut -d' ' -f1)
    got=$(curl -sS -m 120 -H "Authorization: Bearer $token" -T "$f" "http://127.0.0.1:$HPORT/files/$key" | sed -n 's/.*"md5":"\([0-9a-f]*\)".*/\1/p')
    if [ "$got" != "$want" ]; then echo "client $c upload $n: md5 '$got' != '$want'"; errors=$((errors + 1)); fi
    if ! curl -sS -m 120 -H "Authorization: Bearer $token" "http://127.0.0.1:$HPORT/files/$key" | cmp -s - "$f"; then
      echo "client $c upload $n: download differs"; errors=$((errors + 1))
    fi
    rm -f "$f"
  done
  return "$errors"
}
export -f http_client
export WORK HPORT UPLOADS

started=$(date +%s)
set +e
timeout "$DEADLINE" "$BIN/stress_native" --addr "127.0.0.1:$SPORT" --clients "$NATIVE" --uploads "$UPLOADS" --deadline "$DEADLINE" >"$WORK/native.out" 2>&1 &
NPID=$!
seq "$HTTP" | timeout "$DEADLINE" xargs -P "$HTTP" -I{} bash -c 'http_client {}' >"$WORK/http.out" 2>&1
http_rc=$?
wait "$NPID"; native_rc=$?
set -e
elapsed=$(( $(date +%s) - started ))
tail -n 15 "$WORK/native.out"
http_errors=$(grep -c 'client ' "$WORK/http.out" || true)
echo "http: $HTTP clients x $UPLOADS uploads through the gateway, $http_errors errors (xargs exit $http_rc)"
echo "native: $NATIVE clients x $UPLOADS uploads (exit $native_rc)"
echo "elapsed: ${elapsed}s"
[ "$http_errors" -eq 0 ] && [ "$http_rc" -eq 0 ] && [ "$native_rc" -eq 0 ] || { head -20 "$WORK/http.out"; exit 1; }
echo "stress_mixed: $((CLIENTS * UPLOADS)) uploads, 0 errors"
