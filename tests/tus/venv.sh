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

command -v "$python" >/dev/null 2>&1 || skip "no $python on PATH"
install_venv() {
    # The stamp holds the requirements the venv was made from.
    if cmp -s "$requirements" "$venv/.requirements" &&
        "$venv/bin/python" -c 'import tusclient, selenium' >/dev/null 2>&1; then
        return 0
    fi
    say "installing tuspy and selenium into $venv"
    rm -rf "$venv"
    "$python" -m venv "$venv" >&2 || {
        rm -rf "$venv"
        skip "$python -m venv failed (is the venv module installed?)"
    }
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        --requirement "$requirements" >&2 || {
        rm -rf "$venv"
        skip "pip could not install tests/tus/requirements.txt (offline?)"
    }
    cp "$requirements" "$venv/.requirements"
}
mkdir -p "$(dirname "$venv")"
if command -v flock >/dev/null 2>&1; then
    # Test binaries running at once install one at a time.
    exec 9>"$venv.lock"
    flock 9
    install_venv
    flock -u 9
    exec 9>&-
else
    install_venv
fi
echo "$venv/bin/python"
