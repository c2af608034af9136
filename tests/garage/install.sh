#!/usr/bin/env bash
# Install Garage, the S3 server the storage tests start (tests/src/garage.rs),
# unless the pinned version (tests/garage/VERSION) is already there.
#
#   tests/garage/install.sh        # .ci/run runs it before the tests
#
# Cold, `cargo install` builds it from crates.io in about 9 minutes on two
# cores (a C compiler is needed for its bundled lmdb, sqlite, zstd and
# libsodium); it lands in $CARGO_HOME/bin (~/.cargo/bin), where the tests
# look for it after $GARAGE_BIN and PATH, so later runs skip this in a
# second. Without Garage the S3 tests are reported as ignored with the
# reason (a failure under STEP_REQUIRE_ALL_TESTS, as CI sets).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$(tr -d '[:space:]' <"$here/VERSION")
bin_dir=${CARGO_HOME:-$HOME/.cargo}/bin

installed() { # installed BINARY -> 0 when it is the pinned version
  # "garage v2.5.0 [...]" (release build) or "garage cargo:2.5.0 [...]".
  [[ -x $1 ]] && "$1" --version 2>/dev/null | grep -Eq "^garage (v|cargo:)${version//./\\.}( |$)"
}
for candidate in "${GARAGE_BIN:-}" "$(command -v garage || true)" "$bin_dir/garage"; do
  if [[ -n $candidate ]] && installed "$candidate"; then
    echo "garage: v$version already installed at $candidate" >&2
    exit 0
  fi
done

echo "garage: installing v$version with cargo install (about 9 minutes cold on 2 cores)" >&2
start=$(date +%s)
cargo install garage --locked --version "$version"
echo "garage: installed v$version in $(($(date +%s) - start)) s at $bin_dir/garage" >&2
installed "$bin_dir/garage" || { echo "garage: $bin_dir/garage --version is not v$version" >&2; exit 1; }
