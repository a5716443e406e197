"""Scenario 7: a node of a three-node RabbitMQ cluster fails in the middle of a workload.

A private cluster (tests/faults/cluster.py) is started for the module. In each scenario four
worker processes and three senders are given the URLs of all three nodes; the senders send
thousands of tasks with results while RPCs and broadcasts go on alongside. Once a share of the
results is in, one node fails:

- ``first-node-killed``: every client has the nodes in the same order, so all of them are on
  node 1; it is SIGKILLed and stays down until the end of the scenario;
- ``leader-killed``: the clients' orders are rotated (they start spread over the nodes); the
  node leading the task queue's quorum (``rabbitmqctl list_queues name leader``) is SIGKILLed;
- ``leader-paused``: the same node is SIGSTOPped for ``PAUSE_SECONDS`` and then resumed.

Promised (with quorum queues): no task is lost, no result is lost, every result handle
resolves exactly once, RPCs and broadcasts flow again after the failover. Each scenario
prints its figures: sent, completed, lost, executed_twice, results_lost (tasks a worker
completed whose result never came), failover_s (the longest wait for a result from the fault
on) and what RPCs and broadcasts did.

Opt-in, as the cluster costs about 20-30 s to start and each scenario 30-60 s:
``KIWITRIO_CLUSTER_TESTS=short`` (1500 tasks a scenario; scripts/test.sh sets it for its
Python 3.12 session on the host's RabbitMQ unless KIWITRIO_CLUSTER_CI is set empty) or ``=long``
(5000 tasks, and every scenario again with the workers sharing a store of finished tasks;
``nox -s cluster``, which also runs it on a RabbitMQ 4.3 cluster in the Debian sid chroot).
``KIWITRIO_CLUSTER_QUEUE_TYPE=classic`` measures classic queues instead (which lose tasks on
node death: that is what it shows).
"""

from __future__ import annotations

import functools
import itertools
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

import kiwitrio
from kiwitrio.testing import KiwitrioNames

from .cluster import PrivateCluster
from .private_broker import PrivateBroker, available
from .workload import (
    FAST_RECONNECT,
    BroadcastStats,
    Figures,
    RpcStats,
    TaskBook,
    WorkerFleet,
    WorkerProc,
    executed_twice,
    report,
    traffic_alongside,
    wait_all_ready,
)

VARIANT = os.environ.get("KIWITRIO_CLUSTER_TESTS", "")
QUEUE_TYPE = os.environ.get("KIWITRIO_CLUSTER_QUEUE_TYPE", "quorum")

pytestmark = [
    pytest.mark.faults, pytest.mark.cluster, pytest.mark.timeout(360),
    pytest.mark.skipif(VARIANT not in ("short", "long"),
                       reason="cluster scenarios are opt-in: KIWITRIO_CLUSTER_TESTS=short|long"),
]



@dataclass(frozen=True)
class Workload:
    """How big a scenario is."""

    tasks: int
    workers: int = 4
    senders: int = 3
    prefetch: int = 4
    #: Simulated work per task, and tasks sent and not answered per sender.
    task_seconds: float = 0.005
    in_flight: int = 100
    #: The fault comes when this share of the results is in.
    fault_at: float = 0.3

    def task(self, task_id: int) -> dict[str, Any]:
        return {"id": task_id, "sleep": self.task_seconds}


SIZE = Workload(tasks=5000) if VARIANT == "long" else Workload(tasks=1500)
#: The long variant also runs every scenario with the workers sharing a store of finished
#: tasks (one SQLite file), to measure executed_twice with and without it.
STORES = [False, True] if VARIANT == "long" else [False]
#: A paused node stays paused this long: well past the clients' heartbeat timeout (they move
#: away), well under Erlang's net_ticktime (60 s; the other nodes keep it as a member, so
#: resuming it makes no partition).
PAUSE_SECONDS = 15.0
#: Clients notice a silent (paused) node after two missed heartbeats.
HEARTBEAT = 2.0
#: Reaching the fault, and the end: generous, for a loaded 2-core machine.
FAULT_DEADLINE = 90.0
RESULTS_DEADLINE = 180.0
#: No result for this long means the workload is stuck (the figures then say what is missing).
STALL = 45.0
#: Starting the cluster, or bringing a failed node back between scenarios.
CLUSTER_DEADLINE = 240.0


def queue_options() -> dict[str, Any]:
    """The senders' queue options (the workers get the same through their command line)."""
    return {"queue_type": QUEUE_TYPE}


def rotated(urls: Sequence[str], by: int) -> list[str]:
    by %= len(urls)
    return [*urls[by:], *urls[:by]]


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[PrivateCluster]:
    """The module's three-node cluster; killed and removed at the end, also on failure."""
    reason = available()
    if reason is not None:
        pytest.skip(f"cannot start private RabbitMQ nodes: {reason}")
    nodes = PrivateCluster.create()
    request.addfinalizer(nodes.destroy)  # first: runs even if start() fails
    try:
        nodes.start(timeout=CLUSTER_DEADLINE)
    except RuntimeError as exc:
        raise AssertionError(f"{exc}\n{nodes.describe()}") from None
    yield nodes


def bring_back(cluster: PrivateCluster) -> None:
    """Every node running and clustered again (a scenario killed or paused one)."""
    for node in cluster.nodes:
        if node.own_pids():
            node.resume()  # harmless on a running node; a failed test may have left it paused
        if not node.is_running():
            node.kill()  # what is left of it, if anything
            cluster.restart(node)
    cluster.wait_clustered(deadline=time.monotonic() + CLUSTER_DEADLINE)


@pytest.fixture
async def live_cluster(cluster: PrivateCluster) -> PrivateCluster:
    await trio.to_thread.run_sync(bring_back, cluster)
    return cluster


@pytest.fixture
async def cluster_fleet(tmp_path: Path,
                        kiwitrio_names: KiwitrioNames) -> AsyncIterator[WorkerFleet]:
    """Worker processes, stopped at the end. Nothing is made on the shared broker: the
    names' queues live on the cluster, which goes with the module."""
    fleet = WorkerFleet(tmp_path, kiwitrio_names)
    try:
        yield fleet
    finally:
        await fleet.stop_all()


def names_options(names: KiwitrioNames) -> dict[str, Any]:
    return {"message_exchange": names.message_exchange, "task_exchange": names.task_exchange,
            "task_queue": names.task_queue, "testing_mode": True}


# -- faults ----------------------------------------------------------------------------------------


@dataclass
class FaultRecord:
    """What a fault did, for the figures."""

    node: str = ""
    at: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


#: A fault: given the cluster and the task queue's name, it fails a node (and returns once
#: the fault is complete: a paused node resumed), filling in the record as it goes.
Fault = Callable[[PrivateCluster, str, FaultRecord], Awaitable[None]]


def live_observer(cluster: PrivateCluster, *, besides: PrivateBroker) -> PrivateBroker:
    """A node other than ``besides`` to ask with rabbitmqctl."""
    return next(node for node in cluster.nodes if node is not besides)


async def kill_first(cluster: PrivateCluster, _queue: str, record: FaultRecord) -> None:
    record.node = cluster.first.node
    record.at = time.monotonic()
    await trio.to_thread.run_sync(cluster.first.kill)


async def find_leader(cluster: PrivateCluster, queue: str) -> PrivateBroker:
    """The task queue's quorum leader (for a classic queue: the node it lives on)."""
    return await trio.to_thread.run_sync(cluster.quorum_leader, queue, cluster.first)


async def kill_leader(cluster: PrivateCluster, queue: str, record: FaultRecord) -> None:
    leader = await find_leader(cluster, queue)
    record.node = leader.node
    record.at = time.monotonic()
    await trio.to_thread.run_sync(leader.kill)
    observer = live_observer(cluster, besides=leader)
    record.extra["new_leader"] = await new_leader(cluster, queue, observer, leader)


async def new_leader(cluster: PrivateCluster, queue: str, observer: PrivateBroker,
                     old: PrivateBroker) -> str:
    """The leader elected after ``old`` failed (polled: the election takes a moment)."""
    with trio.move_on_after(60):
        while True:
            try:
                leader = await trio.to_thread.run_sync(cluster.quorum_leader, queue, observer)
            except (LookupError, RuntimeError):
                leader = None
            if leader is not None and leader is not old:
                return leader.node
            await trio.sleep(1)
    return "none within 60 s"


async def pause_leader(cluster: PrivateCluster, queue: str, record: FaultRecord) -> None:
    leader = await find_leader(cluster, queue)
    record.node = leader.node
    record.at = time.monotonic()
    await trio.to_thread.run_sync(leader.pause)
    try:
        await trio.sleep(PAUSE_SECONDS)  # the fault is the pause's length
    finally:
        await trio.to_thread.run_sync(leader.resume)
    record.extra["paused_s"] = time.monotonic() - record.at


# -- the scenario ----------------------------------------------------------------------------------


def longest_wait(times: Sequence[float], since: float, until: float) -> float:
    """The longest time without a result between ``since`` and ``until`` (the failover, as
    the senders see it; ``until`` counts while results were still missing then)."""
    marks = [since, *(t for t in times if since <= t <= until), until]
    return max(b - a for a, b in itertools.pairwise(marks))


def broadcasts_after(workers: Sequence[WorkerProc], seq: int) -> int:
    """Broadcasts numbered above ``seq`` that some worker logged."""
    seen = {int(line.split()[1]) for w in workers for line in w.log_lines()
            if line.startswith("broadcast ") and line.split()[1].isdigit()}
    return sum(1 for s in seen if s > seq)


async def spawn_workers(fleet: WorkerFleet, urls: Sequence[str], *, spread: bool,
                        store: Path | None) -> list[WorkerProc]:
    workers = [await fleet.spawn(f"w{i}", rotated(urls, i if spread else 0), prefetch=SIZE.prefetch,
                                 heartbeat=HEARTBEAT, wait_ready=False, queue_type=QUEUE_TYPE,
                                 finished_tasks=store)
               for i in range(SIZE.workers)]
    await wait_all_ready(workers)
    return workers


@asynccontextmanager
async def spread_senders(urls: Sequence[str], names: KiwitrioNames, *,
                         spread: bool) -> AsyncIterator[list[kiwitrio.Communicator]]:
    """The senders, each given every URL (rotated by its number when ``spread``)."""
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(kiwitrio.open_communicator(
                   rotated(urls, i + SIZE.workers if spread else 0), **names_options(names),
                   heartbeat=HEARTBEAT, reconnect=FAST_RECONNECT, **queue_options()))
               for i in range(SIZE.senders)]


@dataclass
class Observed:
    """What the run saw around the fault."""

    book: TaskBook
    rpc: RpcStats
    broadcasts: BroadcastStats
    record: FaultRecord
    rpc_ok_at_fault: int = 0
    broadcast_seq_at_fault: int = 0
    resolved_at_fault: int = 0
    #: When the wait for results ended (all in, or stuck).
    ended: float = 0.0


async def run_workload(cluster: PrivateCluster, fleet: WorkerFleet, names: KiwitrioNames,
                       fault: Fault, *, spread: bool,
                       store: Path | None) -> tuple[Observed, list[WorkerProc]]:
    """Workers and senders on the cluster; the fault once a share of the results is in."""
    workers = await spawn_workers(fleet, cluster.urls, spread=spread, store=store)
    book, record = TaskBook(), FaultRecord()
    async with spread_senders(cluster.urls, names, spread=spread) as senders, \
            traffic_alongside(senders[0], fleet) as (rpc, broadcasts):
        seen = Observed(book, rpc, broadcasts, record)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(book.send_all, senders, range(SIZE.tasks),
                                                 SIZE.task, max_outstanding=SIZE.in_flight))
            with trio.fail_after(FAULT_DEADLINE):
                await book.wait_resolved(int(SIZE.tasks * SIZE.fault_at))
            seen.rpc_ok_at_fault, seen.broadcast_seq_at_fault = rpc.ok, broadcasts.sent
            seen.resolved_at_fault = book.resolved
            await fault(cluster, names.task_queue, record)
            await wait_for_results(book, RESULTS_DEADLINE, stall=STALL)
            seen.ended = time.monotonic()
            # Stuck: what is not sent yet stays unsent, and the figures say so.
            nursery.cancel_scope.cancel()
        await wait_until(lambda: rpc.ok > seen.rpc_ok_at_fault, STALL)
    return seen, workers


async def wait_for_results(book: TaskBook, seconds: float, *, stall: float) -> None:
    """Until every task is sent and answered (or refused), at most ``seconds``; give up
    early when no result came for ``stall`` seconds (sends may be stuck too)."""
    with trio.move_on_after(seconds):
        while book.resolved + len(book.send_errors) < SIZE.tasks:
            with trio.move_on_after(stall) as progress:
                await book.wait_resolved(book.resolved + 1)
            if progress.cancelled_caught:
                return


async def wait_until(condition: Callable[[], bool], seconds: float) -> None:
    """Poll ``condition`` for at most ``seconds`` (the caller's checks say if it held)."""
    with trio.move_on_after(seconds):
        while True:
            if condition():
                return
            await trio.sleep(0.1)


def answered(book: TaskBook, task_id: int) -> bool:
    """Whether the sender got a result (not an error) for the task."""
    handle = book.handles.get(task_id)
    return handle is not None and handle.done() and handle.exception() is None


def figures_of(scenario: str, seen: Observed, fleet: WorkerFleet,
               workers: Sequence[WorkerProc], began: float) -> tuple[Figures, list[str]]:
    book = seen.book
    completed, problems = book.check(fleet.pids)
    completions = fleet.completions()
    # A task some worker completed whose sender got no result (its handle still waiting, or
    # failed when the sender closed): the result went missing, not the task.
    results_lost = [task_id for task_id in completions if not answered(book, task_id)]
    figures = Figures(
        f"cluster-{scenario}", sent=book.sent, completed=completed,
        lost=book.sent - completed, executed_twice=executed_twice(completions),
        extra={
            "results_lost": len(results_lost), "send_errors": len(book.send_errors),
            "failover_s": longest_wait(book.resolved_times, seen.record.at, seen.ended),
            "node": seen.record.node.split("@")[0], **seen.record.extra,
            "queue_type": QUEUE_TYPE,
            "resolved_at_fault": seen.resolved_at_fault,
            "worker_reconnects": sum(w.states().count("reconnecting") for w in workers),
            "rpc_ok": seen.rpc.ok, "rpc_ok_after_fault": seen.rpc.ok - seen.rpc_ok_at_fault,
            "rpc_unroutable": seen.rpc.unroutable, "rpc_timeouts": seen.rpc.timeouts,
            "rpc_errors": len(seen.rpc.errors), "broadcasts_sent": seen.broadcasts.sent,
            "broadcasts_seen_after_fault": broadcasts_after(workers,
                                                             seen.broadcast_seq_at_fault),
            "duration_s": time.monotonic() - began,
        },
    )
    return figures, problems


async def check_scenario(scenario: str, cluster: PrivateCluster, fleet: WorkerFleet,
                         names: KiwitrioNames, fault: Fault, capsys: pytest.CaptureFixture[str],
                         *, spread: bool, store: Path | None) -> None:
    began = time.monotonic()
    seen, workers = await run_workload(cluster, fleet, names, fault, spread=spread, store=store)
    await fleet.stop_all()
    figures, problems = figures_of(scenario, seen, fleet, workers, began)
    figures.extra["finished_tasks_store"] = store is not None
    report(figures, capsys)
    detail = f"{figures.line()}\nfirst problems: {problems[:10]}\n" \
             f"send errors: {seen.book.send_errors[:5]}\n" \
             f"rpc errors: {seen.rpc.errors[:5]}\n{fleet.describe()}"
    assert figures.sent == SIZE.tasks, detail
    assert figures.lost == 0, detail
    assert figures.extra["results_lost"] == 0, detail
    assert not seen.book.send_errors, detail
    assert figures.extra["rpc_ok_after_fault"] > 0, detail
    assert figures.extra["broadcasts_seen_after_fault"] > 0, detail


# -- the scenarios ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("scenario", "fault", "spread"), [
    pytest.param("first-node-killed", kill_first, False, id="first-node-killed"),
    pytest.param("leader-killed", kill_leader, True, id="leader-killed"),
    pytest.param("leader-paused", pause_leader, True, id="leader-paused"),
])
@pytest.mark.parametrize("with_store", STORES, ids=lambda on: "store" if on else "no-store")
async def test_node_failure_loses_nothing(
    scenario: str, fault: Fault, spread: bool, with_store: bool, live_cluster: PrivateCluster,
    cluster_fleet: WorkerFleet, kiwitrio_names: KiwitrioNames, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The scenarios of the module docstring; ``spread``: the clients' URL orders rotated;
    ``with_store``: the workers share a store of finished tasks."""
    await check_scenario(scenario, live_cluster, cluster_fleet, kiwitrio_names, fault, capsys,
                         spread=spread, store=tmp_path / "finished.db" if with_store else None)
