#!/usr/bin/env bash
# The Python venv of the tus and browser tests: tests/tus/requirements.txt
# (tuspy, selenium, pinned) installed into
#   ${TUS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/step-tests/tus-venv}
# when missing or made from other requirements (kept outside the clone, so
# a fresh clone reuses it). Prints the venv's python on stdout.
#
# Exit status: 0 = ready, 77 = skipped (no python3, no venv module, pip
# could not install: the reason is on stderr as "tus: SKIP: ..."), other =
# setup error.
set -euo pipefail
SKIP=77
here=$(cd "$(dirname "$0")" && pwd)
venv=${TUS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/step-tests/tus-venv}
requirements=$here/requirements.txt
python=${PYTHON:-python3}

say() { echo "tus: $*" >&2; }
skip() {
    say "SKIP: $*"
    exit "$SKIP"
}

# shellcheck source=../python/pinned_venv.sh
. "$here/../python/pinned_venv.sh"
pinned_venv "$python" "$venv" "$requirements" \
    "$venv/bin/python" -c 'import tusclient, selenium, axe_selenium_python'
echo "$venv/bin/python"
