#!/usr/bin/env bash
# Build and start the cluster of deploy/cluster/docker-compose.yml on this
# Docker host, with nothing pulled from a registry:
#
#     deploy/cluster/up.sh          # again later: rebuilds what changed, keeps data
#     deploy/cluster/down.sh        # removes containers, networks, volumes, images
#
# 1. stage.sh builds static step-server/gateway (cargo, release) and stages
#    Garage (tests/garage/install.sh), redis-server and haproxy (Debian
#    packages) with their libraries; the images are FROM scratch.
# 2. The state directory ($STEP_CLUSTER_STATE, default deploy/cluster/.state,
#    mode 700) gets, once: the token secret, Garage's RPC secret, an S3 key.
# 3. Garage: the three nodes connected, one zone each with equal capacity,
#    layout applied, bucket `step`, the key imported with read and write.
# 4. Everything else started; waits (deadline STEP_CLUSTER_WAIT, 180 s)
#    until each container is healthy and the front balancer sees every
#    step-server and gateway up.
#
# Environment: COMPOSE_PROJECT_NAME (step-cluster), STEP_CLUSTER_TAG (image
# tag, latest), the port variables listed in docker-compose.yml.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

command -v docker >/dev/null 2>&1 || die "docker is not installed"
docker info >/dev/null 2>&1 || die "no Docker engine answers (docker info fails)"
((${#COMPOSE_CMD[@]})) || die "neither docker-compose nor the docker compose plugin is installed"
command -v curl >/dev/null 2>&1 || die "curl is needed"
WAIT="${STEP_CLUSTER_WAIT:-180}"
T0=$SECONDS

# ------------------------------------------------------------ binaries
say "building and staging binaries (cargo release build; minutes the first time)"
CLIENT_DIR="$("$HERE/stage.sh")" || die "deploy/cluster/stage.sh failed"

# ------------------------------------------------------------ secrets
hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }
mkdir -p "$STEP_CLUSTER_STATE"
chmod 700 "$STEP_CLUSTER_STATE"
if [[ ! -s $STEP_CLUSTER_STATE/token-secret ]]; then
    hex 32 >"$STEP_CLUSTER_STATE/token-secret"
fi
# Read by uid 65532 in the containers through a bind mount; the directory
# (700) keeps other users of this host out.
chmod 444 "$STEP_CLUSTER_STATE/token-secret"
if [[ ! -s $STEP_CLUSTER_STATE/garage.env ]]; then
    printf 'GARAGE_RPC_SECRET=%s\n' "$(hex 32)" >"$STEP_CLUSTER_STATE/garage.env"
fi
if [[ ! -s $STEP_CLUSTER_STATE/s3.env ]]; then
    # Garage's key format: GK + 24 hex digits, secret 64 hex digits.
    printf 'AWS_ACCESS_KEY_ID=GK%s\nAWS_SECRET_ACCESS_KEY=%s\n' "$(hex 12)" "$(hex 32)" \
        >"$STEP_CLUSTER_STATE/s3.env"
fi
chmod 600 "$STEP_CLUSTER_STATE/garage.env" "$STEP_CLUSTER_STATE/s3.env"
KEY_ID="$(sed -n 's/^AWS_ACCESS_KEY_ID=//p' "$STEP_CLUSTER_STATE/s3.env")"
KEY_SECRET="$(sed -n 's/^AWS_SECRET_ACCESS_KEY=//p' "$STEP_CLUSTER_STATE/s3.env")"

# ------------------------------------------------------------ images
t=$SECONDS
compose build -q >/dev/null || die "image build failed (compose build)"
say "images built in $((SECONDS - t)) s"

# ------------------------------------------------------------ Garage
compose up -d garage1 garage2 garage3 redis s3 >/dev/null 2>&1 ||
    { compose up -d garage1 garage2 garage3 redis s3; die "compose up (store) failed"; }

deadline=$((SECONDS + WAIT))
until_ok() { # until_ok WHAT CMD...: retry until it succeeds or the deadline
    local what="$1"
    shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "$what: not done after ${WAIT} s (last try: $("$@" 2>&1 | tail -3))"
        sleep 0.5
    done
}
declare -A NODE
for n in 1 2 3; do
    until_ok "garage$n answering" garage "$n" node id -q
    NODE[$n]="$(garage "$n" node id -q 2>/dev/null | tr -d '\r')"
done
for n in 2 3; do
    until_ok "garage1 connecting to garage$n" garage 1 node connect "${NODE[$n]}@garage$n:3901"
done
layout_version() { garage 1 layout show 2>/dev/null | sed -n 's/^Current cluster layout version: //p'; }
until_ok "garage layout readable" layout_version
if [[ "$(layout_version)" == 0 ]]; then
    # One zone per node: Garage then puts the three copies of every object
    # on three different nodes, as it would on three hosts.
    for n in 1 2 3; do
        garage 1 layout assign -z "zone$n" -c 10G "${NODE[$n]}" >/dev/null
    done
    garage 1 layout apply --version 1 >/dev/null || die "garage layout apply failed"
    say "garage layout applied: 3 nodes, 3 zones, replication factor 3"
fi
ensure_bucket() { garage 1 bucket info step || garage 1 bucket create step; }
until_ok "bucket step" ensure_bucket
if ! garage 1 key info "$KEY_ID" >/dev/null 2>&1; then
    garage 1 key import --yes "$KEY_ID" "$KEY_SECRET" -n step-cluster >/dev/null ||
        die "garage key import failed"
fi
garage 1 bucket allow --read --write step --key "$KEY_ID" >/dev/null || die "garage bucket allow failed"
say "garage ready: bucket step, key $KEY_ID (read, write) in $STEP_CLUSTER_STATE/s3.env"

# ------------------------------------------------------------ the rest
compose up -d >/dev/null 2>&1 || { compose up -d; die "compose up failed"; }

health() { docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$(cid "$1")" 2>/dev/null; }
for s in redis step1 step2 step3 gw1 gw2; do
    while [[ "$(health "$s")" != healthy ]]; do
        ((SECONDS < deadline)) || {
            compose logs --no-color --tail 20 "$s" >&2
            die "$s not healthy after ${WAIT} s (status: $(health "$s"))"
        }
        sleep 0.5
    done
done
STATS="http://127.0.0.1:${STEP_CLUSTER_STATS_PORT:-8404}/stats;csv"
# Columns 1, 2, 18 of HAProxy's CSV: proxy, server, status.
front_up() {
    local csv
    csv="$(curl -fsS "$STATS" 2>/dev/null)" || return 1
    [[ "$(awk -F, '($1=="step"||$1=="http") && $2!="FRONTEND" && $2!="BACKEND" && $18=="UP"' <<<"$csv" | wc -l)" == 5 ]]
}
until_ok "front balancer seeing all 3 step-servers and 2 gateways up ($STATS)" front_up

STEP_PORT="${STEP_CLUSTER_STEP_PORT:-1379}"
HTTP_PORT="${STEP_CLUSTER_HTTP_PORT:-8080}"
say "cluster $PROJECT up and healthy in $((SECONDS - T0)) s"
cat <<USAGE

STEP cluster "$PROJECT" is up: 3 Garage nodes, Redis, 3 step-servers, 2 gateways, HAProxy.

  HTTP through the balancer:
    curl -F file=@otter.jpg http://localhost:$HTTP_PORT/upload
    curl -o otter.jpg http://localhost:$HTTP_PORT/files/otter.jpg
  STEP through the balancer (any course client: -server_ip 127.0.0.1, port $STEP_PORT):
    $CLIENT_DIR/step-client -server_ip 127.0.0.1 -port $STEP_PORT -id 123456 -f otter.jpg
  One instance directly (127.0.0.1): step1-3 on ${STEP_CLUSTER_STEP1_PORT:-13791}-${STEP_CLUSTER_STEP3_PORT:-13793}, gw1/gw2 on ${STEP_CLUSTER_GW1_PORT:-18081}/${STEP_CLUSTER_GW2_PORT:-18082}
  Balancer state: curl 'http://127.0.0.1:${STEP_CLUSTER_STATS_PORT:-8404}/stats'
  Garage CLI:     docker exec \$(docker-compose -p $PROJECT -f $HERE/docker-compose.yml ps -q garage1) garage status
  Stop and remove everything (volumes and images too): $HERE/down.sh
USAGE
