#!/usr/bin/env bash
# Run the end-to-end demo (examples/demo.py): make sure a broker answers, set up .venv, then
# start a pool of workers and send them tasks, an RPC and broadcasts. Arguments go to demo.py
# (e.g. --workers 5 --tasks 50); its exit code is this script's exit code.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/ensure-broker.sh
bash scripts/bootstrap.sh

echo "demo: .venv/bin/python examples/demo.py $*"
exec .venv/bin/python examples/demo.py "$@"
