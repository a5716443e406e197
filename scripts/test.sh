#!/usr/bin/env bash
# Run the test suite: make sure a broker answers, set up .venv, then run pytest in it.
# Arguments go to pytest (default: -q); pytest's exit code is this script's exit code.
#   bash scripts/test.sh                  # whole suite
#   bash scripts/test.sh -x -k rpc        # any pytest arguments
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/ensure-broker.sh
bash scripts/bootstrap.sh

if [[ $# -eq 0 ]]; then
    set -- -q
fi
echo "test: .venv/bin/python -m pytest $*"
exec .venv/bin/python -m pytest "$@"
