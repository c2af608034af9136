#!/usr/bin/env bash
# Remove the cluster of deploy/cluster/up.sh: containers, networks, volumes
# (the stored files and the Redis state) and images; then the state
# directory (secrets, S3 key). Same COMPOSE_PROJECT_NAME / STEP_CLUSTER_TAG /
# STEP_CLUSTER_STATE as up.sh.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

((${#COMPOSE_CMD[@]})) || die "neither docker-compose nor the docker compose plugin is installed"
# Compose reads the env and secret files even to remove; they may be gone.
mkdir -p "$STEP_CLUSTER_STATE"
for f in garage.env s3.env token-secret; do
    [[ -e $STEP_CLUSTER_STATE/$f ]] || : >"$STEP_CLUSTER_STATE/$f"
done
compose down -v --rmi all --remove-orphans
rm -rf "$STEP_CLUSTER_STATE"
say "cluster $PROJECT removed (containers, networks, volumes, images, $STEP_CLUSTER_STATE)"
