#!/usr/bin/env bash
# Run the tests. Makes sure a broker answers on 127.0.0.1:5672 and sets up .venv first.
#
#   bash scripts/test.sh              the whole matrix, which is what CI (.ci/run) runs:
#                                     Python 3.12 and 3.14, each against the local broker and
#                                     against RabbitMQ 4.3, on the default (thread) bridge
#                                     (3.14 without the fault suite), and Python 3.12
#                                     on the trio-asyncio bridge (fault suite aside)
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
# failures; about 3 minutes) are meant to run in the first session only, in their short
# variant (KIWITRIO_CLUSTER_CI=short); the long one, and the one on a RabbitMQ 4.3 cluster,
# are `nox -s cluster`. Off by default until a reconnecting communicator no longer needs the
# classic task-queue catalogue (`<task exchange>.catalogue`), which is unavailable while its
# node is down: the scenarios then lose results now and then.
KIWITRIO_CLUSTER_TESTS=${KIWITRIO_CLUSTER_CI:-} run .venv/bin/python -m nox -s tests-3.12 -- "${PYTEST_ARGS[@]}"
run .venv/bin/python -m nox -s tests_rmq43-3.12 -- "${PYTEST_ARGS[@]}"
# The fault suite (private nodes, worker processes: the slowest part, about 90 s a session)
# runs on 3.12 against both brokers; on 3.14 it is left out to keep CI within its 30
# minutes (nox -s tests-3.14 runs it there).
run .venv/bin/python -m nox -s tests-3.14 tests_rmq43-3.14 -- "${PYTEST_ARGS[@]}" \
    --ignore=tests/faults
run .venv/bin/python -m nox -s tests_trio_asyncio-3.12 -- "${PYTEST_ARGS[@]}" \
    --ignore=tests/faults
echo "test: the matrix took $((SECONDS - start)) s; $([[ $status == 0 ]] && echo "every session passed" || echo "a session FAILED (see above)")"
exit $status
