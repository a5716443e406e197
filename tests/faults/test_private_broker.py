"""Scenarios 2 and 4: the broker itself fails, on a private RabbitMQ node of this module.

Scenario 2: the node is SIGKILLed in the middle of a workload (four worker processes, three
senders, RPCs and broadcasts) and restarted on the same data: the durable task queue and its
persistent tasks survive, every client reconnects, no task is lost. The moment of the crash is
not left to timing: the workers hold back most tasks until the test releases them, so at the
crash a known backlog of confirmed tasks waits in the queue, whatever the machine's load.

Scenario 4: the node is down when the workers and senders start; they keep trying (their
startup_give_up_after covers the wait) and, once it is up, the workload completes.

The node (``private_broker`` in conftest.py) is started once for the module and killed, its
files removed, at the end. The shared broker is not used here at all.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio

import kiwitrio

from ..conftest import Names
from ..tcp_proxy import open_tcp_proxy
from .private_broker import PrivateBroker
from .workload import (
    FAST_RECONNECT,
    Figures,
    TaskBook,
    WorkerFleet,
    WorkerProc,
    executed_twice,
    open_senders,
    report,
    traffic_alongside,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]

N_WORKERS = 4
N_SENDERS = 3
PREFETCH = 4
TASK_SECONDS = 0.01
RESULTS_DEADLINE = 60.0
DEADLINE = 20.0
#: Reaching the state to crash in: workers and broker are slower on a loaded machine.
SETTLE_DEADLINE = 60.0


def make_task(task_id: int) -> dict[str, Any]:
    return {"id": task_id, "sleep": TASK_SECONDS}


@pytest.fixture
def broker(private_broker: PrivateBroker) -> Iterator[PrivateBroker]:
    """The module's node, running at the start of each test (a failed test may have left
    it down)."""
    if not private_broker.is_running():
        private_broker.start()
    yield private_broker


def reconnecting(worker: WorkerProc) -> bool:
    return "reconnecting" in worker.states()


def make_held_task(task_id: int) -> dict[str, Any]:
    """A task the workers keep, unacknowledged, until released (see tests/worker_process.py)."""
    return {**make_task(task_id), "hold": True}


def holding(worker: WorkerProc) -> bool:
    """Whether the worker holds ``PREFETCH`` tasks (held ones, once the free ones are done):
    it takes no other task until released, as the broker hands a consumer at most its
    prefetch count unacknowledged."""
    return len(worker.in_flight_ids()) == PREFETCH


async def wait_until_still(book: TaskBook, workers: list[WorkerProc],
                           observer: kiwitrio.Communicator, queue: str, *, outstanding: int,
                           seconds: float) -> int:
    """Wait until nothing moves in the task workload any more, and the broker says so.

    In this order, each of which stays true once reached: every worker holds ``PREFETCH``
    held tasks (so, the free ones being done, no task is done any more), every sender has
    its ``outstanding`` tasks confirmed and unanswered (so it sends no more), and the broker
    (a passive declare through ``observer``) counts the rest of the unanswered tasks ready
    in the queue, with every worker consuming from it. Returns that count.
    """
    expected_ready = outstanding - len(workers) * PREFETCH
    stats = None
    try:
        with trio.fail_after(seconds):
            for worker in workers:
                await worker.wait_for(holding, f"holding {PREFETCH} held tasks", seconds)
            await book.wait_outstanding(outstanding)
            while stats is None or (stats.messages, stats.consumers) != (
                    expected_ready, len(workers)):
                if stats is not None:
                    await trio.sleep(0.05)
                stats = await observer._ctx.session.inspect_queue(queue)
    except trio.TooSlowError:
        raise AssertionError(
            f"the workload did not settle within {seconds} s: in flight per worker "
            f"{[sorted(w.in_flight_ids()) for w in workers]} (want {PREFETCH} held ones), "
            f"outstanding {book.outstanding} (want {outstanding}), queue {stats} (want "
            f"{expected_ready} messages ready, {len(workers)} consumers)") from None
    assert book.outstanding == outstanding, (book.outstanding, outstanding)
    return expected_ready


@pytest.mark.timeout(300)  # its deadlines add up to more than the module's 180 s
async def test_broker_sigkilled_mid_workload_and_restarted(
    names: Names, fleet: WorkerFleet, broker: PrivateBroker,
    capsys: pytest.CaptureFixture[str],
) -> None:
    n_tasks = 1500
    max_outstanding = 300
    # A quarter of the tasks are done before the crash. The others are held: each sender
    # ends up with max_outstanding of them confirmed, unanswered and waiting in the queue.
    free = n_tasks // 4
    assert (n_tasks - free) // N_SENDERS > max_outstanding
    began = time.monotonic()
    book = TaskBook()
    workers = await fleet.spawn_many(N_WORKERS, broker.url, prefetch=PREFETCH,
                                     hold_until_released=True)
    async with open_senders(broker.url, names, N_SENDERS, reconnect=FAST_RECONNECT) as senders, \
            traffic_alongside(senders[0], fleet) as (rpc, broadcasts):
        with trio.fail_after(RESULTS_DEADLINE):
            await book.send_all(senders, range(free), make_task,
                                max_outstanding=max_outstanding)
            await book.wait_resolved(free)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(book.send_all, senders, range(free, n_tasks),
                                                 make_held_task,
                                                 max_outstanding=max_outstanding))
            # The crash comes when a known backlog waits in the queue, not after some time.
            settling = time.monotonic()
            ready_at_kill = await wait_until_still(
                book, workers, senders[0], names.task_queue,
                outstanding=N_SENDERS * max_outstanding, seconds=SETTLE_DEADLINE)
            held_at_kill = sum(len(w.in_flight_ids()) for w in workers)
            settle_s = time.monotonic() - settling
            resolved_at_kill = book.resolved
            sent_before_kill = set(book.handles)
            await trio.to_thread.run_sync(broker.kill)
            killed_at = time.monotonic()
            # Every worker noticed before the node comes back.
            for worker in workers:
                await worker.wait_for(reconnecting, "reconnecting", DEADLINE)
            noticed_s = time.monotonic() - killed_at
            restart_s = await trio.to_thread.run_sync(broker.start)
            # The held tasks are not answered yet, so none of those back in the queue can have
            # left it again: the queue after the restart is what survived the crash (however
            # long rabbitmqctl takes on a loaded machine).
            depths = await trio.to_thread.run_sync(broker.queue_depths)
            outage_s = time.monotonic() - killed_at
            for worker in workers:
                await worker.release()
        await book.wait_all(RESULTS_DEADLINE)
        # Before the senders close (closing fails what is still pending).
        unresolved = book.unresolved()
        completed, problems = book.check(fleet.pids)
    returncodes = await fleet.stop_all()

    completions = fleet.completions()
    # Lost tasks that a worker completed before it saw the crash: the task was done (and,
    # its result confirmed by the broker, acknowledged), the result went missing.
    done_before_crash = set().union(*(w.done_before("state reconnecting") for w in workers))
    lost_after_done = [task_id for task_id in unresolved if task_id in done_before_crash]
    # Tasks confirmed before the crash and not yet done: they had to survive it on disk.
    survivors = sent_before_kill - done_before_crash
    depth_after_restart = depths.get(names.task_queue, 0)
    figures = Figures(
        "broker-sigkill-restart", sent=book.sent, completed=completed,
        lost=book.sent - completed, executed_twice=executed_twice(completions),
        extra={
            "lost_results_of_tasks_done_before_crash": len(lost_after_done),
            "resolved_at_kill": resolved_at_kill,
            "unresolved_at_kill": len(sent_before_kill) - resolved_at_kill,
            "queue_ready_at_kill": ready_at_kill,
            "held_at_kill": held_at_kill,
            "tasks_survived_crash": len(survivors & set(completions)),
            "tasks_to_survive": len(survivors),
            "queue_depth_after_restart": depth_after_restart,
            "settle_s": settle_s, "noticed_s": noticed_s, "outage_s": outage_s,
            "restart_s": restart_s,
            "worker_reconnects": sum(w.states().count("reconnecting") for w in workers),
            "rpc_ok": rpc.ok, "rpc_unroutable": rpc.unroutable, "rpc_timeouts": rpc.timeouts,
            "broadcasts_sent": broadcasts.sent,
            "broadcasts_seen": sum(w.broadcasts_seen() for w in workers),
            "duration_s": time.monotonic() - began,
        },
    )
    report(figures, capsys)

    assert book.send_errors == []
    assert book.sent == n_tasks
    assert resolved_at_kill < n_tasks, "the workload ended before the crash"
    # The durable queue and its persistent tasks came back with the node: every task
    # confirmed before the crash and not yet done then was done after the restart.
    assert names.task_queue in depths, depths
    assert survivors, "no task was waiting in the queue at the crash"
    # Exactly the tasks in the queue at the crash (ready, or held by the workers) had to
    # survive it.
    assert len(survivors) == ready_at_kill + held_at_kill, (
        len(survivors), ready_at_kill, held_at_kill)
    # The clients declare the queue again when they reconnect, so its mere presence above
    # proves little: its contents must have come back (all of them held, none can have
    # been answered and acknowledged since).
    assert depth_after_restart >= len(survivors), (
        f"the queue came back with {depth_after_restart} tasks; {len(survivors)} confirmed "
        "persistent tasks were waiting in it at the crash")
    assert survivors <= set(completions), sorted(survivors - set(completions))[:20]
    assert returncodes == {w.name: 0 for w in workers}, fleet.describe()
    assert rpc.errors == [], rpc.errors[:10]
    assert rpc.ok > 0
    assert all(w.broadcasts_seen() > 0 for w in workers)
    # Every task that is not lost came back right, exactly once.
    assert [p for p in problems if not p.endswith(": no result")] == [], problems[:20]
    assert not (unresolved and sorted(lost_after_done) == unresolved), (
        f"regression: {len(unresolved)} results lost in the broker crash. Their tasks were "
        "completed and acknowledged before the crash, so their results were in the durable "
        "reply queue: task results must be published persistent (ReplyRouter.send "
        f"persistent=True) to survive a broker restart. Lost: {unresolved[:20]}"
    )
    assert figures.lost == 0, f"{len(problems)} problems: {problems[:20]}"


def connection_attempts(records: list[logging.LogRecord]) -> int:
    return sum(1 for r in records if r.name == "kiwitrio.reconnect"
               and "failed (attempt" in r.getMessage())


def failed_attempts(worker: WorkerProc) -> int:
    return worker.stderr().count("failed (attempt")


async def test_broker_down_at_start_then_up(
    names: Names, fleet: WorkerFleet, broker: PrivateBroker,
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
) -> None:
    n_tasks = 1000
    began = time.monotonic()
    book = TaskBook()
    await trio.to_thread.run_sync(broker.kill)
    down_at = time.monotonic()
    workers = [await fleet.spawn(f"w{i}", broker.url, prefetch=PREFETCH, wait_ready=False)
               for i in range(N_WORKERS)]
    senders_up = trio.Event()
    figures_extra: dict[str, Any] = {}

    async def workload() -> None:
        async with open_senders(broker.url, names, N_SENDERS,
                                reconnect=FAST_RECONNECT) as senders:
            senders_up.set()
            async with traffic_alongside(senders[0], fleet) as (rpc, broadcasts):
                await book.send_all(senders, range(n_tasks), make_task)
                await book.wait_all(RESULTS_DEADLINE)
            figures_extra.update(rpc_ok=rpc.ok, rpc_errors=rpc.errors,
                                 broadcasts_sent=broadcasts.sent)

    with trio.fail_after(RESULTS_DEADLINE + 60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(workload)
            # Everyone is trying, and failing, to connect while the node is down.
            with trio.fail_after(30):
                while connection_attempts(caplog.records) < 2 * N_SENDERS or any(
                        failed_attempts(w) < 2 for w in workers):
                    assert all(w.process.poll() is None for w in workers), fleet.describe()
                    await trio.sleep(0.05)
            assert not senders_up.is_set()
            assert not any(w.ready for w in workers)
            attempts_while_down = connection_attempts(caplog.records) + sum(
                failed_attempts(w) for w in workers)
            start_s = await trio.to_thread.run_sync(broker.start)
            down_s = time.monotonic() - down_at
            for worker in workers:
                await worker.wait_ready()
    returncodes = await fleet.stop_all()

    completed, problems = book.check(fleet.pids)
    completions = fleet.completions()
    figures = Figures(
        "broker-down-at-start", sent=book.sent, completed=completed,
        lost=book.sent - completed, executed_twice=executed_twice(completions),
        extra={
            "down_s": down_s, "start_s": start_s,
            "connect_attempts_while_down": attempts_while_down,
            "rpc_ok": figures_extra.get("rpc_ok"),
            "broadcasts_sent": figures_extra.get("broadcasts_sent"),
            "broadcasts_seen": sum(w.broadcasts_seen() for w in workers),
            "duration_s": time.monotonic() - began,
        },
    )
    report(figures, capsys)

    assert book.send_errors == []
    assert book.sent == n_tasks
    assert problems == [], f"{len(problems)} problems: {problems[:20]}"
    assert figures.lost == 0
    # Connected once, when the node came up, and never lost it.
    for worker in workers:
        assert [s for s in worker.states() if s != "closed"] == ["connected"], worker.describe()
    assert returncodes == {w.name: 0 for w in workers}, fleet.describe()
    assert figures_extra.get("rpc_errors") == []
    assert (figures_extra.get("rpc_ok") or 0) > 0
    assert all(w.broadcasts_seen() > 0 for w in workers)


async def test_result_waiting_for_an_absent_sender_survives_a_broker_restart(
    names: Names, broker: PrivateBroker, capsys: pytest.CaptureFixture[str],
) -> None:
    """The focused form of what scenario 2 found: a result waits in the sender's durable
    reply queue while the sender is away (its connection blocked by a proxy of the test); the
    node is SIGKILLed and restarted; the sender comes back and must still get the result."""
    done = trio.Event()

    async def square(_comm: Any, task: int) -> int:
        done.set()
        return task * task

    async with open_tcp_proxy(target_port=broker.port) as proxy, \
            kiwitrio.open_communicator(proxy.url(), **names.kwargs(),
                                       reconnect=FAST_RECONNECT) as sender, \
            kiwitrio.open_communicator(broker.url, **names.kwargs(),
                                       reconnect=FAST_RECONNECT) as worker:
        reply_queue = sender._replies.queue_name
        handle = await sender.task_send(7)
        proxy.block()  # the sender is away; its durable reply queue stays
        await worker.add_task_subscriber(square)
        with trio.fail_after(DEADLINE):
            await done.wait()
            depth_before = 0
            while depth_before == 0:  # the result is published, then the task acknowledged
                depth_before = (await trio.to_thread.run_sync(broker.queue_depths)).get(
                    reply_queue, 0)
        await trio.to_thread.run_sync(broker.kill)
        await trio.to_thread.run_sync(broker.start)
        depth_after = (await trio.to_thread.run_sync(broker.queue_depths)).get(reply_queue)
        proxy.unblock()
        with trio.move_on_after(5):  # the sender is back within a second
            await handle
        result = handle.result() if handle.done() else None
        task_depth = (await trio.to_thread.run_sync(broker.queue_depths)).get(names.task_queue)
    figures = Figures(
        "result-across-broker-restart", sent=1, completed=int(result == 49),
        lost=int(result != 49), executed_twice=0,
        extra={"reply_queue_depth_before_kill": depth_before,
               "reply_queue_depth_after_restart": depth_after,
               "task_queue_depth_at_end": task_depth},
    )
    report(figures, capsys)
    assert depth_after is not None, "the durable reply queue did not survive the restart"
    assert task_depth == 0, "the task came back: it was not acknowledged"
    assert not (result is None and depth_before == 1 and depth_after == 0), (
        "regression: the result sat in the sender's durable reply queue, which survived the "
        "restart empty: the result was published transient (task results must be "
        "persistent), and the task was already acknowledged, so it is lost"
    )
    assert result == 49
