#!/usr/bin/env bash
# A private three-node RabbitMQ cluster on this machine, for trying kiwitrio against a cluster
# by hand (the cluster fault tests start their own, tests/faults/test_cluster.py).
#
#   bash scripts/cluster.sh start     start 3 nodes, cluster them; prints their URLs, comma-separated
#   bash scripts/cluster.sh urls      the URLs again
#   bash scripts/cluster.sh status    each node: answers AMQP or not, its pids; the running nodes
#   bash scripts/cluster.sh stop      kill the nodes (by their own node names), remove every file
#
#   bash scripts/cluster.sh --rmq43 start|...   the same with RabbitMQ 4.3, inside the Debian sid
#                                               chroot (scripts/sid.sh; built on first use)
#
# The nodes are ktc1-<random>@localhost ... ktc3-<random>@localhost on free loopback ports, with
# their files and state.json under ${KIWITRIO_CLUSTER_DIR:-/tmp/kiwitrio-cluster} (the 4.3
# cluster: ${KIWITRIO_CLUSTER_DIR:-/tmp/kiwitrio-cluster-rmq43}). The shared node (rabbit@ on
# 5672) is never touched. Clustering takes about 15-20 s here. The work is done by
# tests/faults/cluster.py (standard library only). Needs root or the rabbitmq user's rights.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ ${1:-} == --rmq43 ]]; then
    shift
    export KIWITRIO_CLUSTER_DIR=${KIWITRIO_CLUSTER_DIR:-/tmp/kiwitrio-cluster-rmq43}
    bash scripts/sid.sh ensure
    # The chroot's python3.14: cluster.py needs nothing but the standard library. The nodes
    # outlive this command in the mount namespace that sid.sh run made for it.
    exec bash scripts/sid.sh run python3.14 -m tests.faults.cluster "$@"
fi
python=python3
[[ -x .venv/bin/python ]] && python=.venv/bin/python
exec "$python" -m tests.faults.cluster "$@"
