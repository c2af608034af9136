#!/usr/bin/env bash
# Login flood, before and after: the latency of a correct LOGIN and of a
# request with a valid token during 300 and during 3,000 concurrent wrong
# logins, on the STEP port (step-server --auth accounts) and through a
# gateway in front of it (--backend; wrong HTTP Basic passwords, a Bearer
# token), with the server's CPU and RSS meanwhile (bench/login_flood.py).
#
#     bench/login_flood.sh                 # before = main, after = this tree
#     BEFORE_REV=abc123 bench/login_flood.sh
#     BEFORE_BIN=dir AFTER_BIN=dir bench/login_flood.sh   # prebuilt binaries
#
# The flood comes from 127.0.0.10-59 (Linux routes all of 127/8 to loopback),
# the honest client from 127.0.0.1. Writes bench/results/login_flood.md and
# the raw JSON lines beside it. Loopback only; every loop is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECS=${SECS:-10}
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ -n "${BEFORE_TREE:-}" ]]; then git worktree remove --force "$BEFORE_TREE" >/dev/null 2>&1 || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

if [[ -z "${AFTER_BIN:-}" ]]; then
    nice cargo build --release -q --locked -p step-server -p gateway
    AFTER_BIN=$ROOT/target/release
fi
if [[ -z "${BEFORE_BIN:-}" ]]; then
    BEFORE_TREE=$WORK/before
    git worktree add -q --detach "$BEFORE_TREE" "${BEFORE_REV:-main}"
    (cd "$BEFORE_TREE" && CARGO_TARGET_DIR=$ROOT/target/bench-before \
        nice cargo build --release -q --locked -p step-server -p gateway)
    BEFORE_BIN=$ROOT/target/bench-before/release
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

RAW=$ROOT/bench/results/login_flood.jsonl
: >"$RAW"
for build in before after; do
    bin=$BEFORE_BIN; [[ $build == after ]] && bin=$AFTER_BIN
    for flood in 300 3000; do
        for mode in step http; do
            data=$WORK/$build-$flood-$mode
            sport=$(free_port); hport=$(free_port)
            printf 'alice pw\n' | "$bin/step-server" --data-dir "$data" user add alice >/dev/null
            "$bin/step-server" --ip 127.0.0.1 --port "$sport" --data-dir "$data" --auth accounts \
                --token-secret "bench-$$" --log error >/dev/null 2>&1 &
            spid=$!; PIDS+=("$spid")
            wait_port "$sport"
            target=127.0.0.1:$sport
            if [[ $mode == http ]]; then
                "$bin/gateway" --bind 127.0.0.1 --port "$hport" --backend "127.0.0.1:$sport" \
                    --anonymous none --log error >/dev/null 2>&1 &
                PIDS+=("$!")
                wait_port "$hport"
                target=127.0.0.1:$hport
            fi
            echo "== $build, $flood wrong logins, $mode" >&2
            python3 bench/login_flood.py "$mode" "$target" --flood "$flood" --secs "$SECS" --pid "$spid" |
                python3 -c "import json,sys; d=json.load(sys.stdin); d['build']='$build'; print(json.dumps(d))" >>"$RAW"
            for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
            wait 2>/dev/null || true
            PIDS=()
        done
    done
done

python3 - "$RAW" >"$ROOT/bench/results/login_flood.md" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("# Login flood: before and after\n")
print("`bench/login_flood.sh`: a correct login and a token request, twice a second, during N")
print("concurrent wrong logins (STEP: LOGIN; HTTP: Basic through a gateway with --backend).")
print("Latency median / max in ms (ok of n), the step-server's CPU (% of one core, median) and")
print("RSS (max). Loopback, 2 cores shared.\n")
print("| build | wrong logins | port | correct login | token request | server CPU | server RSS | flood answers |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    f = lambda s: f"{s['median_ms']} / {s['max_ms']} ({s['ok']} of {s['n']})"
    print(f"| {r['build']} | {r['flood']} | {r['mode']} | {f(r['correct_login'])} | {f(r['token_request'])} "
          f"| {r['server_cpu_pct_median']} % | {r['server_rss_mb_max']} MB | {r['flood_answers']} |")
EOF
cat "$ROOT/bench/results/login_flood.md"
