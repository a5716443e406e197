#!/usr/bin/env bash
# Run the tests. Makes sure a broker answers on 127.0.0.1:5672 and sets up .venv first.
#
#   bash scripts/test.sh              the whole matrix, which is what CI (.ci/run) runs:
#                                     Python 3.12 against the local broker (with the fault
#                                     suite and sqlite://), Python 3.14 against RabbitMQ 4.3
#                                     (without the fault suite), on the default (thread)
#                                     bridge, and Python 3.12 on the trio-asyncio bridge
#                                     (fault suite aside; these two run at the same time)
#   bash scripts/test.sh -x -k rpc    any pytest arguments: one run in .venv (the host's Python,
#                                     the local broker), for working on the code
#
# The matrix runs through nox (noxfile.py; each session: nox -s NAME). Python 3.14 and the
# RabbitMQ 4.3 node come from a Debian sid chroot that scripts/sid.sh builds on first use
# (needs root; about 2 minutes, then reused). The 4.3 node is stopped at the end unless it was
# running before. Exit status: 0 when every session passed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/ensure-broker.sh
bash scripts/bootstrap.sh

if [[ $# -gt 0 ]]; then
    echo "test: .venv/bin/python -m pytest $*"
    exec .venv/bin/python -m pytest "$@"
fi

if ! .venv/bin/python -c 'import nox' >/dev/null 2>&1; then
    echo "test: installing nox into .venv"
    .venv/bin/python -m pip install --quiet nox
fi

rmq43_was_running=0
if bash scripts/sid.sh rabbitmq status >/dev/null 2>&1; then
    rmq43_was_running=1
fi
stop_rmq43() {
    if [[ $rmq43_was_running == 0 ]] && bash scripts/sid.sh rabbitmq status >/dev/null 2>&1; then
        bash scripts/sid.sh rabbitmq stop || true
    fi
}
trap stop_rmq43 EXIT

PYTEST_ARGS=(-q -p no:cacheprovider)
status=0
run() {
    echo "test: $*"
    "$@" || status=1
}
start=$SECONDS
# Each session installs the working tree into its own environment (.nox/...). The cluster
# scenarios (tests/faults/test_cluster.py: a private 3-node RabbitMQ 3.10 cluster, three node
# failures; about 3 minutes) run in the first session only, in their short variant
# (KIWITRIO_CLUSTER_CI=short, the default; KIWITRIO_CLUSTER_CI= leaves them out); the long
# one, and the one on a RabbitMQ 4.3 cluster, are `nox -s cluster`.
KIWITRIO_CLUSTER_TESTS=${KIWITRIO_CLUSTER_CI-short} run .venv/bin/python -m nox -s tests-3.12 -- "${PYTEST_ARGS[@]}"
# Without the fault suite (private nodes, worker processes, timing: it runs alone, above),
# two sessions run at once: they use different brokers (RabbitMQ 4.3 and the shared 3.10)
# and mostly wait on them. To keep CI within its 30 minutes now that the suites also run on
# sqlite://, the matrix is a diagonal: Python 3.12 with RabbitMQ 3.10 (and the fault suite),
# Python 3.14 with RabbitMQ 4.3, and 3.12 on the trio-asyncio bridge. `nox -s tests-3.14`
# and `nox -s tests_rmq43-3.12` (with the fault suite on 4.3) run the other two corners.
together() {
    local sessions=("$@") pids=() logs=() i
    for i in "${!sessions[@]}"; do
        logs[i]=$(mktemp)
        .venv/bin/python -m nox -s "${sessions[i]}" -- "${PYTEST_ARGS[@]}" \
            --ignore=tests/faults >"${logs[i]}" 2>&1 &
        pids[i]=$!
    done
    for i in "${!sessions[@]}"; do
        echo "test: nox -s ${sessions[i]} -- ${PYTEST_ARGS[*]} --ignore=tests/faults (alongside)"
        wait "${pids[i]}" || status=1
        cat "${logs[i]}"
        rm -f "${logs[i]}"
    done
}
together tests_rmq43-3.14 tests_trio_asyncio-3.12
echo "test: the matrix took $((SECONDS - start)) s; $([[ $status == 0 ]] && echo "every session passed" || echo "a session FAILED (see above)")"
exit $status
