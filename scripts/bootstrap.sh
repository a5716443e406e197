#!/usr/bin/env bash
# Create (or update) the virtual environment .venv in the repository and install kiwitrio into
# it in editable mode with its test dependencies: pip install -e ".[test]".
#
# Python: $PYTHON if set, else python3 if it is >= 3.10, else python3.13 ... python3.10 on PATH,
# else a pyenv 3.12/3.11/3.13/3.10. Idempotent and fast when already done: pip runs only when
# pyproject.toml changed since the last successful install (a stamp file in .venv records it).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd -P)
VENV="$ROOT/.venv"
STAMP="$VENV/.kiwitrio-bootstrap-stamp"
export PIP_DISABLE_PIP_VERSION_CHECK=1

say() { echo "bootstrap: $*"; }
die() { echo "bootstrap: ERROR: $*" >&2; exit 1; }

# True if the interpreter $1 runs and is Python >= 3.10.
recent_enough() {
    "$1" -c 'import sys; sys.exit(sys.version_info < (3, 10))' >/dev/null 2>&1
}

find_python() {
    local candidate
    if [[ -n ${PYTHON:-} ]]; then
        recent_enough "$PYTHON" || die "PYTHON=$PYTHON is not a Python >= 3.10"
        echo "$PYTHON"
        return
    fi
    for candidate in python3 python3.13 python3.12 python3.11 python3.10; do
        if command -v "$candidate" >/dev/null 2>&1 && recent_enough "$candidate"; then
            command -v "$candidate"
            return
        fi
    done
    local pyenv_root=${PYENV_ROOT:-}
    if [[ -z $pyenv_root ]] && command -v pyenv >/dev/null 2>&1; then
        pyenv_root=$(pyenv root 2>/dev/null || true)
    fi
    [[ -n $pyenv_root ]] || pyenv_root="$HOME/.pyenv"
    for candidate in 3.12 3.11 3.13 3.10; do
        # The newest patch release of that minor version.
        local found
        found=$(ls -d "$pyenv_root"/versions/"$candidate".*/bin/python3 2>/dev/null | sort -V | tail -n 1 || true)
        if [[ -n $found ]] && recent_enough "$found"; then
            echo "$found"
            return
        fi
    done
    die "no Python >= 3.10 found (tried python3, python3.1x and pyenv); install one or set PYTHON=/path/to/python3"
}

if [[ -x $VENV/bin/python ]] && recent_enough "$VENV/bin/python"; then
    say "using the existing .venv ($("$VENV/bin/python" -V 2>&1))"
else
    if [[ -e $VENV ]]; then
        say ".venv exists but has no working Python >= 3.10; recreating it"
        rm -rf "$VENV"
    fi
    PY=$(find_python)
    # Through a pyenv shim: name the interpreter itself.
    PY=$("$PY" -c 'import sys; print(sys.executable)')
    say "creating .venv with $PY ($("$PY" -V 2>&1))"
    "$PY" -m venv "$VENV" \
        || die "'$PY -m venv' failed (on Debian/Ubuntu: apt-get install python3-venv)"
fi

HASH=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ -f $STAMP ]] && { [[ $STAMP -nt pyproject.toml ]] || [[ $(cat "$STAMP") == "$HASH" ]]; } \
    && "$VENV/bin/python" -c 'import kiwitrio, pytest' >/dev/null 2>&1; then
    say "kiwitrio and its test dependencies are installed and pyproject.toml is unchanged; skipping pip"
else
    say "installing: pip install -e \".[test]\" ..."
    start=$SECONDS
    rm -f "$STAMP"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip \
        || say "could not upgrade pip; going on with $("$VENV/bin/python" -m pip --version)"
    "$VENV/bin/python" -m pip install --quiet -e ".[test]" \
        || die "pip install -e \".[test]\" failed (see the errors above)"
    echo "$HASH" >"$STAMP"
    say "installed kiwitrio $("$VENV/bin/python" -c 'import kiwitrio; print(kiwitrio.__version__)') in $((SECONDS - start))s"
fi
