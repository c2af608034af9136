#!/usr/bin/env bash
# Build static step-server, gateway and step-client binaries on this host and
# stage the first two for docker/Dockerfile.local, so the images can be built
# with nothing pulled:
#
#     docker/stage-local.sh
#     docker-compose -f docker-compose.yml -f docker/compose.local.yml up --build
#
# glibc linked statically (+crt-static on the host's *-linux-gnu target): no
# musl target needed, and the binaries run on scratch. Prints the directory
# holding the built binaries (step-client included) on stdout.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CARGO="${CARGO:-cargo}"
HOST="$(rustc -vV | sed -n 's/^host: //p')"
case "$HOST" in
    *-linux-gnu*) ;;
    *) echo "stage-local: needs a *-linux-gnu host, not $HOST" >&2; exit 1 ;;
esac

# With an explicit --target, RUSTFLAGS reaches the target only, not build
# scripts or proc macros. CARGO_ENCODED_RUSTFLAGS (set under cargo) would win.
env -u CARGO_ENCODED_RUSTFLAGS RUSTFLAGS="-C target-feature=+crt-static" \
    "$CARGO" build --release --locked --quiet --target "$HOST" \
    -p step-server -p gateway -p step-client >&2
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/$HOST/release"

for bin in step-server gateway step-client; do
    if command -v file >/dev/null 2>&1; then
        if ! file -L "$BIN/$bin" | grep -q 'static'; then
            echo "stage-local: $bin is not statically linked: $(file -L "$BIN/$bin")" >&2
            exit 1
        fi
    elif ldd "$BIN/$bin" 2>/dev/null | grep -q '=>'; then
        echo "stage-local: $bin is dynamically linked" >&2
        exit 1
    fi
done

# docker/compose.local.yml builds from target/docker-local, whatever CARGO_TARGET_DIR is.
STAGE="$ROOT/target/docker-local"
rm -rf "$STAGE"
mkdir -p "$STAGE/rootfs/data" "$STAGE/rootfs/tmp"
chmod 1777 "$STAGE/rootfs/tmp"
for bin in step-server gateway; do
    strip --strip-debug -o "$STAGE/$bin" "$BIN/$bin" 2>/dev/null || cp "$BIN/$bin" "$STAGE/$bin"
done
echo "$BIN"
