#!/usr/bin/env bash
# Stage every binary the cluster's images need, so deploy/cluster/Dockerfile
# and docker/Dockerfile.local build FROM scratch with nothing pulled:
#
#   target/docker-local/    static step-server and gateway (docker/stage-local.sh)
#   target/cluster-stage/   garage, redis-server + redis-cli, haproxy: each
#                           binary with the shared libraries `ldd` lists and
#                           the dynamic loader, under <name>/rootfs/
#
# Garage is the binary tests/garage/install.sh installs (GARAGE_BIN, else
# garage on PATH, else ~/.cargo/bin/garage); redis-server, redis-cli and
# haproxy come from this host's Debian packages (redis-server, redis-tools,
# haproxy). Prints the directory holding step-client on stdout.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STAGE="$ROOT/target/cluster-stage"

find_bin() { # find_bin NAME [CANDIDATE...] -> the first executable found
    local name="$1" c
    shift
    for c in "$@" "$(command -v "$name" 2>/dev/null || true)" "/usr/bin/$name" "/usr/sbin/$name"; do
        if [[ -n $c && -x $c ]]; then
            echo "$c"
            return 0
        fi
    done
    echo "stage: $name not found (install it: see deploy/cluster/README or .ci/run)" >&2
    return 1
}

# stage_dynamic ROOTFS BINARY DEST: BINARY at ROOTFS/DEST plus every library
# ldd resolves and the loader, at their own paths (the loader looks in
# /lib/x86_64-linux-gnu and the like without an ld.so.cache).
stage_dynamic() {
    local rootfs="$1" bin="$2" dest="$3" lib
    mkdir -p "$rootfs$(dirname "$dest")"
    cp -L "$bin" "$rootfs$dest"
    while read -r lib; do
        [[ -n $lib ]] || continue
        mkdir -p "$rootfs$(dirname "$lib")"
        cp -L "$lib" "$rootfs$lib"
    done < <(ldd "$bin" | awk '/=> \//{print $3} /^[ \t]*\/[^ ]+ \(/{print $1}')
}

# The order tests/src/garage.rs looks in.
GARAGE="$(find_bin garage "${GARAGE_BIN:-}" "$(command -v garage || true)" "${CARGO_HOME:-$HOME/.cargo}/bin/garage")"
REDIS="$(find_bin redis-server)"
REDIS_CLI="$(find_bin redis-cli)"
HAPROXY="$(find_bin haproxy)"

CLIENT_DIR="$("$ROOT/docker/stage-local.sh")"

rm -rf "$STAGE"
for name in garage redis haproxy; do
    mkdir -p "$STAGE/$name/rootfs/data" "$STAGE/$name/rootfs/tmp"
    chmod 1777 "$STAGE/$name/rootfs/tmp"
done
stage_dynamic "$STAGE/garage/rootfs" "$GARAGE" /usr/local/bin/garage
stage_dynamic "$STAGE/redis/rootfs" "$REDIS" /usr/local/bin/redis-server
stage_dynamic "$STAGE/redis/rootfs" "$REDIS_CLI" /usr/local/bin/redis-cli
stage_dynamic "$STAGE/haproxy/rootfs" "$HAPROXY" /usr/local/bin/haproxy
# cargo install keeps debug info; the image needs none.
strip --strip-debug "$STAGE/garage/rootfs/usr/local/bin/garage" 2>/dev/null || true
cp "$ROOT/deploy/cluster/Dockerfile" "$STAGE/Dockerfile"
# The S3 client builds its TLS configuration from the system's roots at
# start and refuses to start with none, even for an http:// endpoint; the
# step-server image has none, so the compose file mounts this copy.
CA=/etc/ssl/certs/ca-certificates.crt
[[ -s $CA ]] || { echo "stage: $CA missing (Debian package ca-certificates)" >&2; exit 1; }
cp "$CA" "$STAGE/ca-certificates.crt"
echo "$CLIENT_DIR"
