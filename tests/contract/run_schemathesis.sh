#!/usr/bin/env bash
# Contract test: the running gateway against /openapi.yaml, with schemathesis.
#
#   tests/contract/run_schemathesis.sh [extra schemathesis run args...]
#
# 1. a Python venv under target/ with tests/contract/requirements.txt
#    (schemathesis and openapi-spec-validator, every version pinned; reused
#    while that file is unchanged), then openapi-spec-validator on openapi.yaml;
# 2. the gateway binary ($GATEWAY_BIN, else `cargo build -p gateway`), started
#    in embedded mode (in-process STEP server) on free ports over a temp store;
# 3. waits for /healthz, runs `schemathesis run` over every operation and
#    phase with every check, a bounded number of examples per operation;
# 4. stops the gateway by its PID and exits with schemathesis' status.
#
# Exit status: schemathesis' (0 = no failures), 77 = skipped because Python or
# the schemathesis install is not available here, anything else = setup error.
#
# Environment:
#   GATEWAY_BIN            gateway binary to test (skips the cargo build)
#   SCHEMATHESIS_VENV      venv directory (default: <target>/contract/venv)
#   SCHEMATHESIS_EXAMPLES  max examples per operation and phase (default 100)
#   SCHEMATHESIS_SEED      seed (default 20251125, the fixed one CI uses; "random" for a fresh
#                          one, printed as "contract: seed N" so a failure can be replayed with
#                          SCHEMATHESIS_SEED=N)
#   SCHEMATHESIS_WORKERS   concurrent workers (default 1: hypothesis + CPython 3.11
#                          threads can hit "AST constructor recursion depth mismatch")
#   CONTRACT_PREPARE_ONLY  set: stop after step 1 (exit 0, or 77 when the tools
#                          cannot be installed here); gateway/tests/contract.rs
#                          checks its prerequisite this way
set -euo pipefail

SCHEMATHESIS_VERSION=4.32.5
SKIP=77

cd "$(dirname "$0")/../.."
root=$(pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
venv=${SCHEMATHESIS_VENV:-$target_dir/contract/venv}
examples=${SCHEMATHESIS_EXAMPLES:-100}
seed=${SCHEMATHESIS_SEED:-20251125}
workers=${SCHEMATHESIS_WORKERS:-1}

say() { echo "contract: $*" >&2; }
skip() {
    say "SKIP: $*"
    exit "$SKIP"
}

# ---------------------------------------------------------------- 1. venv
python=${PYTHON:-python3}
requirements=$root/tests/contract/requirements.txt
st="$venv/bin/schemathesis"
# shellcheck source=../python/pinned_venv.sh
. "$root/tests/python/pinned_venv.sh"
pinned_venv "$python" "$venv" "$requirements" "$st" --version
version=$("$st" --version)
[[ $version == *"$SCHEMATHESIS_VERSION"* ]] || {
    say "$venv has $version, expected $SCHEMATHESIS_VERSION"
    exit 2
}
say "$version"
[[ -z ${CONTRACT_PREPARE_ONLY:-} ]] || exit 0
"$venv/bin/openapi-spec-validator" "$root/openapi.yaml" >&2 || {
    say "openapi.yaml is not a valid OpenAPI document"
    exit 1
}

# ---------------------------------------------------------------- 2. gateway
bin=${GATEWAY_BIN:-}
if [[ -z $bin ]]; then
    cargo build --quiet -p gateway >&2
    bin=$target_dir/debug/gateway
fi
[[ -x $bin ]] || {
    say "no gateway binary at $bin"
    exit 2
}

work=$(mktemp -d "${TMPDIR:-/tmp}/gateway-contract.XXXXXX")
gateway_pid=
cleanup() {
    if [[ -n $gateway_pid ]] && kill -0 "$gateway_pid" 2>/dev/null; then
        kill "$gateway_pid" 2>/dev/null || true
        wait "$gateway_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    "$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
http_port=$(free_port)
step_port=$(free_port)
while [[ $step_port == "$http_port" ]]; do step_port=$(free_port); done

# Only the flags below decide how the gateway runs: no inherited backend or
# auth settings. --max-upload: a tus creation announces its length without
# sending it, and hundreds of generated ones of up to 10^15 bytes would
# otherwise meet the disk's free space (507) instead of the 413 documented
# for lengths over the limit.
env -u STEP_BACKEND -u GATEWAY_REQUIRE_AUTH -u STEP_PUBLIC_USER -u STEP_ANONYMOUS -u GATEWAY_MAX_UPLOAD \
    -u GATEWAY_CORS_ORIGINS -u STEP_DATA_DIR \
    "$bin" --bind 127.0.0.1 --port "$http_port" \
    --step-ip 127.0.0.1 --step-port "$step_port" \
    --data-dir "$work/data" --spool-dir "$work" \
    --max-upload 1048576 \
    --log warn >"$work/gateway.log" 2>&1 &
gateway_pid=$!
base=http://127.0.0.1:$http_port

# ---------------------------------------------------------------- 3. wait
ready=
for _ in $(seq 1 100); do
    if ! kill -0 "$gateway_pid" 2>/dev/null; then
        break
    fi
    if "$venv/bin/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' \
        "$base/healthz" 2>/dev/null; then
        ready=1
        break
    fi
    sleep 0.1
done
if [[ -z $ready ]]; then
    say "the gateway did not come up on $base; its log:"
    cat "$work/gateway.log" >&2
    exit 2
fi
say "gateway $bin (pid $gateway_pid) on $base, STEP on 127.0.0.1:$step_port"

# ---------------------------------------------------------------- 4. run
if [[ $seed == random ]]; then
    seed=$("$venv/bin/python" -c 'import secrets; print(secrets.randbits(32))')
fi
[[ $seed =~ ^[0-9]+$ ]] || {
    say "SCHEMATHESIS_SEED must be a number or \"random\", not $seed"
    exit 2
}
say "seed $seed, at most $examples examples per operation and phase"
status=0
# Every check is enabled by default (not naming them on the command line lets
# tests/contract/schemathesis.toml adjust single operations; `--checks all`
# would override it). Hypothesis' example database would land in the working
# directory; keep none.
# tests/contract/hooks.py teaches it the tus body media type.
SCHEMATHESIS_HOOKS=hooks PYTHONPATH="$root/tests/contract${PYTHONPATH:+:$PYTHONPATH}" \
    "$st" --no-color --config-file tests/contract/schemathesis.toml run "$base/openapi.yaml" \
    --url "$base" \
    --phases examples,coverage,fuzzing,stateful \
    --max-examples "$examples" \
    --workers "$workers" \
    --request-timeout 20 \
    --generation-database none \
    --suppress-health-check too_slow \
    --seed "$seed" \
    "$@" || status=$?

if ! kill -0 "$gateway_pid" 2>/dev/null; then
    say "the gateway died during the run; its log:"
    cat "$work/gateway.log" >&2
    [[ $status != 0 ]] || status=1
elif grep -q "panicked" "$work/gateway.log"; then
    say "the gateway logged a panic:"
    grep -A5 "panicked" "$work/gateway.log" >&2
    [[ $status != 0 ]] || status=1
fi
say "schemathesis exited with $status"
exit "$status"
