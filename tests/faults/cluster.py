"""A private three-node RabbitMQ cluster on this machine, for the cluster fault tests and
``scripts/cluster.sh``.

Each node is a :class:`~tests.faults.private_broker.PrivateBroker` (own node name
``ktc<i>-<random>@localhost``, own AMQP and distribution ports, own data, log and config files,
run as the ``rabbitmq`` user), so everything private_broker.py promises holds here too: nodes
are found and killed by their own node names only, and the shared node (``rabbit@...`` on
port 5672) is never touched. The nodes share the ``rabbitmq`` user's Erlang cookie (the same
home directory), which is all that clustering them needs: they are started in parallel, then
every node but the first runs ``stop_app; join_cluster <first>; start_app``.

The RabbitMQ used is whichever ``/usr/lib/rabbitmq/bin`` the process sees: the host's 3.10,
or 4.3 when this runs inside the Debian sid chroot (``scripts/sid.sh run ...``).

Only the standard library is used, so that the command line (``python -m tests.faults.cluster
start|stop|status|urls``) runs with any Python, in the chroot too. The command line keeps the
cluster's records (node names, ports, directories) in ``state.json`` under
``$KIWITRIO_CLUSTER_DIR`` (default ``/tmp/kiwitrio-cluster``), which ``stop`` uses to kill the
nodes and remove every file.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from .private_broker import START_TIMEOUT, NodeRecord, PrivateBroker, amqp_ready, available

SIZE = 3
#: A paused (SIGSTOPped) node that comes back after the others gave it up sees a partition;
#: pause_minority makes the side without a majority (the returning node) stop and rejoin by
#: itself. The default, ignore, would leave the cluster split.
CLUSTER_CONFIG = "cluster_partition_handling = pause_minority\n"
#: Clustering three nodes took about 15 s here on an idle machine.
CLUSTER_TIMEOUT = 180.0
DEFAULT_DIR = Path(os.environ.get("KIWITRIO_CLUSTER_DIR", "/tmp/kiwitrio-cluster"))

T = TypeVar("T")


class PrivateCluster:
    """Three private RabbitMQ nodes clustered together (see the module docstring).

    Blocking methods; from Trio, call them with ``trio.to_thread.run_sync``.
    """

    def __init__(self, nodes: Sequence[PrivateBroker]) -> None:
        if not nodes:
            raise ValueError("a cluster needs nodes")
        self.nodes = list(nodes)
        self.first = self.nodes[0]
        #: Joins go one at a time: two nodes joining the same one at once can conflict.
        self._join_lock = threading.Lock()

    @classmethod
    def create(cls, size: int = SIZE, *, parent_dir: Path | None = None) -> PrivateCluster:
        """A cluster of ``size`` fresh nodes (their files made, nothing started)."""
        run = os.urandom(3).hex()  # tells this cluster's nodes from another cluster's
        return cls([PrivateBroker(name_prefix=f"ktc{i + 1}-{run}", parent_dir=parent_dir,
                                  extra_config=CLUSTER_CONFIG)
                    for i in range(size)])

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = CLUSTER_TIMEOUT) -> float:
        """Start every node, cluster them, wait until each one sees all others running.

        Returns how long that took. On failure the nodes are left for :meth:`destroy`.
        """
        began = time.monotonic()
        _in_parallel([node.start for node in self.nodes])
        _in_parallel([functools.partial(self._join, node) for node in self.nodes[1:]])
        self.wait_clustered(deadline=began + timeout)
        return time.monotonic() - began

    def _join(self, node: PrivateBroker) -> None:
        node.ctl("stop_app")
        with self._join_lock:
            node.ctl("join_cluster", self.first.node)
        node.ctl("start_app")
        _wait_for(lambda: amqp_ready(node.port), f"{node.node} to accept AMQP after joining",
                  time.monotonic() + START_TIMEOUT)

    def restart(self, node: PrivateBroker) -> float:
        """Start a node that was killed (it rejoins the cluster by itself, from its data)."""
        return node.start()

    def running_nodes(self, via: PrivateBroker) -> set[str]:
        """The cluster's running nodes, as ``via`` sees them."""
        status = json.loads(via.ctl("cluster_status", "--formatter", "json"))
        return set(status.get("running_nodes", []))

    def wait_clustered(self, *, deadline: float) -> None:
        """Wait until every node reports all of them running (a restarted node takes a
        moment to be seen again)."""
        names = {node.node for node in self.nodes}
        # In parallel: each rabbitmqctl call boots an Erlang VM (2-10 s on a loaded machine).
        _in_parallel([functools.partial(_wait_for, functools.partial(self._sees_running, node,
                                                                     names),
                                        f"{node.node} to see {sorted(names)} running", deadline)
                      for node in self.nodes])

    def _sees_running(self, via: PrivateBroker, names: set[str]) -> bool:
        return self.running_nodes(via) == names

    def destroy(self) -> None:
        """Kill every node and remove its files (idempotent)."""
        errors = []
        for node in self.nodes:
            try:
                node.destroy()
            except Exception as exc:  # the other nodes go too
                errors.append(exc)
        if errors:
            raise errors[0]

    # -- finding nodes ---------------------------------------------------------------------

    def node_named(self, name: str) -> PrivateBroker:
        for node in self.nodes:
            if node.node == name:
                return node
        raise LookupError(f"{name} is not a node of this cluster ({self.describe_nodes()})")

    def quorum_leader(self, queue: str, via: PrivateBroker) -> PrivateBroker:
        """The node leading ``queue``'s quorum, as ``via`` sees it; for a classic queue,
        which has no leader, the node it lives on (from its process id)."""
        output = via.ctl("list_queues", "-q", "--no-table-headers", "name", "leader", "pid")
        for line in output.splitlines():
            name, leader, pid = [*line.split("\t"), "", ""][:3]
            if name == queue:
                # A process id reads <NODE.N.N.N>; the node name has no dots here.
                node = leader.strip() or pid.strip().strip("<>").split(".")[0]
                return self.node_named(node)
        raise LookupError(f"no queue {queue!r} on {via.node}: {output!r}")

    def describe_nodes(self) -> str:
        return ", ".join(f"{node.node} on {node.port}" for node in self.nodes)

    def describe(self) -> str:
        """Every node's output and log tails, for failure messages."""
        return "\n".join(f"=== {node.node}\n{node.describe()}" for node in self.nodes)

    # -- records (for the command line) ----------------------------------------------------

    def save(self, path: Path) -> None:
        records = [dataclasses.asdict(node.record()) for node in self.nodes]
        path.write_text(json.dumps({"nodes": records}, indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> PrivateCluster:
        records = json.loads(path.read_text())["nodes"]
        return cls([PrivateBroker(existing=NodeRecord(**record)) for record in records])

    def detach(self) -> None:
        for node in self.nodes:
            node.detach()


def _in_parallel(calls: Sequence[Callable[[], T]]) -> list[T]:
    """Run the calls in threads at once; raise the first failure after all have ended."""
    with ThreadPoolExecutor(max_workers=max(1, len(calls))) as pool:
        futures = [pool.submit(call) for call in calls]
    return [future.result() for future in futures]


def _wait_for(condition: Callable[[], bool], what: str, deadline: float) -> None:
    """Poll ``condition`` until it holds; a failing check (rabbitmqctl refused) is a no."""
    last_error = ""
    while True:
        try:
            if condition():
                return
        except (RuntimeError, OSError) as exc:
            last_error = f" (last error: {exc})"
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}{last_error}")
        time.sleep(0.5)


# -- the command line ----------------------------------------------------------------------------


def _state_file(directory: Path) -> Path:
    return directory / "state.json"


def cmd_start(directory: Path, size: int) -> int:
    state = _state_file(directory)
    if state.exists():
        print(f"cluster: already started ({state}); stop it first", file=sys.stderr)
        return 1
    reason = available()
    if reason is not None:
        print(f"cluster: cannot start private nodes: {reason}", file=sys.stderr)
        return 1
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    cluster = PrivateCluster.create(size, parent_dir=directory)
    cluster.save(state)  # before starting: stop finds half-started nodes too
    try:
        seconds = cluster.start()
    except BaseException:
        print(cluster.describe(), file=sys.stderr)
        cluster.destroy()
        state.unlink(missing_ok=True)
        raise
    cluster.detach()
    print(f"cluster: {size} nodes clustered in {seconds:.1f} s: {cluster.describe_nodes()}",
          file=sys.stderr)
    print(",".join(cluster.urls))
    return 0


def cmd_stop(directory: Path) -> int:
    state = _state_file(directory)
    if not state.exists():
        print(f"cluster: not started ({state} does not exist)", file=sys.stderr)
        return 0
    cluster = PrivateCluster.load(state)
    cluster.destroy()
    state.unlink()
    shutil.rmtree(directory, ignore_errors=True)
    print(f"cluster: stopped and removed {cluster.describe_nodes()}", file=sys.stderr)
    return 0


def cmd_status(directory: Path) -> int:
    state = _state_file(directory)
    if not state.exists():
        print("stopped: no cluster started")
        return 3
    cluster = PrivateCluster.load(state)
    healthy = True
    for node in cluster.nodes:
        pids = node.own_pids()
        ready = amqp_ready(node.port)
        healthy &= ready
        print(f"{node.node}: {node.url} {'answers AMQP' if ready else 'DOWN'} "
              f"(pids {' '.join(map(str, pids)) or 'none'})")
    live = next((node for node in cluster.nodes if amqp_ready(node.port)), None)
    if live is not None:
        running = sorted(cluster.running_nodes(live))
        print(f"running nodes, as {live.node} sees them: {' '.join(running)}")
        healthy &= len(running) == len(cluster.nodes)
    return 0 if healthy else 1


def cmd_urls(directory: Path) -> int:
    state = _state_file(directory)
    if not state.exists():
        print("cluster: not started", file=sys.stderr)
        return 1
    cluster = PrivateCluster.load(state)
    print(",".join(cluster.urls))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cluster", description="A private RabbitMQ cluster on this machine.")
    parser.add_argument("command", choices=["start", "stop", "status", "urls"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                        help="where the nodes' files and state.json live (default: "
                             "$KIWITRIO_CLUSTER_DIR or /tmp/kiwitrio-cluster)")
    parser.add_argument("--size", type=int, default=SIZE, help="nodes (start only)")
    args = parser.parse_args(argv)
    directory: Path = args.dir.resolve()
    if args.command == "start":
        return cmd_start(directory, args.size)
    if args.command == "stop":
        return cmd_stop(directory)
    if args.command == "status":
        return cmd_status(directory)
    return cmd_urls(directory)


if __name__ == "__main__":
    sys.exit(main())
