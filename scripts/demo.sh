#!/usr/bin/env bash
# Run the end-to-end demo (examples/demo.py): make sure a broker answers, set up .venv, then
# start a pool of workers and send them tasks, an RPC and broadcasts. Arguments go to demo.py
# (e.g. --workers 5 --tasks 50); its exit code is this script's exit code.
#
# If no RabbitMQ answers and none can be started or installed (no root, no apt), and no --url
# was given, the demo runs on the sqlite backend instead, on a fresh file under ${TMPDIR:-/tmp}
# (removed afterwards), and says so. KIWITRIO_DEMO_BACKEND=sqlite chooses it from the start.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh

url_given=no
needs_broker=yes
for arg in "$@"; do
    [[ $arg == --url || $arg == --url=* ]] && url_given=yes
    [[ $arg == *sqlite:* || $arg == *memory:* ]] && needs_broker=no
done

backend=${KIWITRIO_DEMO_BACKEND:-rabbitmq}
if [[ $url_given == yes ]]; then
    # The URL given decides; a RabbitMQ one must answer, as before.
    [[ $needs_broker == no ]] || bash scripts/ensure-broker.sh
    backend=given
elif [[ $backend != sqlite ]]; then
    if bash scripts/ensure-broker.sh; then
        backend=given
    else
        echo "demo: no RabbitMQ answers and none could be started or installed"
        backend=sqlite
    fi
fi

if [[ $backend == sqlite ]]; then
    dir=$(mktemp -d "${TMPDIR:-/tmp}/kiwitrio-demo.XXXXXX")
    trap 'rm -rf "$dir"' EXIT
    echo "demo: using the sqlite backend (no broker needed): sqlite://$dir/demo.db"
    echo "demo: .venv/bin/python examples/demo.py --url sqlite://$dir/demo.db $*"
    status=0
    .venv/bin/python examples/demo.py --url "sqlite://$dir/demo.db" "$@" || status=$?
    exit $status
fi

echo "demo: .venv/bin/python examples/demo.py $*"
exec .venv/bin/python examples/demo.py "$@"
