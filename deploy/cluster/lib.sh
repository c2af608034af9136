# Shared by up.sh, down.sh and fault_test.sh (sourced, not run).
# Sets HERE, ROOT, PROJECT, STATE and COMPOSE_CMD, and defines compose,
# cid SERVICE (container id), garage N ARGS... (the garage CLI in node N).

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PROJECT="${COMPOSE_PROJECT_NAME:-step-cluster}"
export STEP_CLUSTER_STATE="${STEP_CLUSTER_STATE:-$HERE/.state}"

say() { printf '[cluster] %s\n' "$*" >&2; }
die() { printf '[cluster] ERROR: %s\n' "$*" >&2; exit 1; }

if command -v docker-compose >/dev/null 2>&1; then
    COMPOSE_CMD=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
    COMPOSE_CMD=(docker compose)
else
    COMPOSE_CMD=()
fi

compose() {
    "${COMPOSE_CMD[@]}" -p "$PROJECT" -f "$HERE/docker-compose.yml" "$@"
}

cid() { compose ps -q "$1" 2>/dev/null; }

garage() {
    local n="$1"
    shift
    docker exec "$(cid "garage$n")" /usr/local/bin/garage "$@"
}

# Export a free loopback port for each of the nine STEP_CLUSTER_*_PORT
# variables (a private copy of the stack beside others: tests, benchmarks).
pick_free_ports() {
    local ports
    ports=$(python3 -c '
import socket
socks = [socket.socket() for _ in range(9)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))') || return 1
    read -r STEP_CLUSTER_STEP_PORT STEP_CLUSTER_HTTP_PORT STEP_CLUSTER_STATS_PORT STEP_CLUSTER_S3_PORT \
        STEP_CLUSTER_STEP1_PORT STEP_CLUSTER_STEP2_PORT STEP_CLUSTER_STEP3_PORT \
        STEP_CLUSTER_GW1_PORT STEP_CLUSTER_GW2_PORT <<<"$ports"
    export STEP_CLUSTER_STEP_PORT STEP_CLUSTER_HTTP_PORT STEP_CLUSTER_STATS_PORT STEP_CLUSTER_S3_PORT \
        STEP_CLUSTER_STEP1_PORT STEP_CLUSTER_STEP2_PORT STEP_CLUSTER_STEP3_PORT \
        STEP_CLUSTER_GW1_PORT STEP_CLUSTER_GW2_PORT
}
