# Sourced, not run: a Python venv made from a requirements file with every
# version pinned, for the test scripts that drive Python tools
# (tests/tus/venv.sh, tests/contract/run_schemathesis.sh). The caller
# defines `say` and `skip` (which exits) first.
#
#   pinned_venv PYTHON VENV REQUIREMENTS CHECK...
#
# Leaves VENV as it is when it was made from this same REQUIREMENTS (a copy
# is kept in VENV/.requirements) and the command CHECK... succeeds; else
# makes it anew with PYTHON. Concurrent callers install one at a time (flock
# on VENV.lock). Skips when PYTHON cannot make a venv or pip cannot install.

pinned_venv() {
    local python=$1 venv=$2 requirements=$3
    shift 3
    command -v "$python" >/dev/null 2>&1 || skip "no $python on PATH"
    mkdir -p "$(dirname "$venv")"
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$venv.lock"
        flock 9
        pinned_venv_install "$python" "$venv" "$requirements" "$@"
        flock -u 9
        exec 9>&-
    else
        pinned_venv_install "$python" "$venv" "$requirements" "$@"
    fi
}

pinned_venv_install() {
    local python=$1 venv=$2 requirements=$3
    shift 3
    if cmp -s "$requirements" "$venv/.requirements" && "$@" >/dev/null 2>&1; then
        return 0
    fi
    say "installing $(basename "$(dirname "$requirements")")/$(basename "$requirements") into $venv"
    rm -rf "$venv"
    "$python" -m venv "$venv" >&2 || {
        rm -rf "$venv"
        skip "$python -m venv failed (is the venv module installed?)"
    }
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        --requirement "$requirements" >&2 || {
        rm -rf "$venv"
        skip "pip could not install $requirements (offline? no wheels for $("$python" --version)?)"
    }
    cp "$requirements" "$venv/.requirements"
}
