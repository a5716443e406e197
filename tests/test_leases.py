"""Task leases: long tasks leave the broker's delivery clock, and are never lost.

These run on both backends with a short lease; tests/faults/test_long_tasks.py shows on a
private RabbitMQ node with a short consumer timeout that a long task then runs only once.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import trio

import kiwitrio

from .conftest import OpenComm

DEADLINE = 15
#: Short, to keep the tests quick, yet three times what a renewal may be late on a loaded
#: machine: a copy not renewed within its lease goes back to the task queue and runs again
#: (0.3 s was too short on sqlite, whose renewals wait for an fsync: CI saw a task run 3 times).
LEASE = 1.0


@pytest.fixture(params=[None, "quorum"], ids=["default-queues", "quorum-queues"])
def open_comm(request: pytest.FixtureRequest, open_comm: OpenComm) -> OpenComm:
    """Leases on classic queues and on quorum ones (whose lease queues dead-letter at least
    once): every communicator of a test declares the same queue type."""
    return functools.partial(open_comm, queue_type=request.param)


async def test_long_task_runs_once_on_a_lease_and_its_result_arrives(open_comm: OpenComm) -> None:
    runs: list[bool] = []
    started, checked = trio.Event(), trio.Event()

    async def long_task(_comm: Any, task: str) -> str:
        runs.append(kiwitrio.current_delivery().redelivered)
        started.set()
        await checked.wait()
        await trio.sleep(LEASE * 3)  # more lease renewals
        return task.upper()

    async with open_comm(task_lease=LEASE) as worker, open_comm() as sender:
        await worker.add_task_subscriber(long_task)
        handle = await sender.task_send("long")
        with trio.fail_after(DEADLINE):
            await started.wait()
            # Moved onto a lease after 1 to 4/3 lease times (later on a loaded machine).
            queue = worker._default_queue
            while True:  # nothing to wait on for the move: polled, within DEADLINE
                if any(lease.leased for lease in queue._running):
                    break
                await trio.sleep(LEASE / 10)
            # Seen from outside: the worker says the task it holds is on a lease...
            [info] = [i for i in await sender.inspect(timeout=1.5)
                      if i.identity == worker.identity]
            assert [task.leased for task in info.in_flight] == [True]
            # ...and on the broker the task left the task queue's delivery (acknowledged)
            # for the worker's lease queue, where it waits out the lease.
            [lease] = queue._running
            assert lease.leased and lease.delivery.settled
            keeper = queue._lease_keeper
            assert keeper is not None
            # Polled, within DEADLINE: the broker sees a settle a moment after the worker
            # made it (acks and rejects go out in bursts, on another channel than the one
            # that looks), and a renewal briefly holds two copies.
            while True:
                async with keeper._lock:  # not in the middle of a renewal
                    stats = await sender._ctx.session.inspect_queue(keeper.name)
                assert stats is not None
                if stats.messages == 1:
                    break
                await trio.sleep(LEASE / 10)
            checked.set()
            assert await handle == "LONG"
        # The lease went with the task: nothing comes back to be run again.
        async with open_comm(task_lease=LEASE) as other:
            await other.add_task_subscriber(long_task)
            await trio.sleep(LEASE * 4)  # longer than a lease: an orphaned copy would show
    assert runs == [False]


async def test_leased_task_of_a_closed_worker_is_finished_by_another(open_comm: OpenComm) -> None:
    started = trio.Event()
    first_runs = 0

    async def never_finishes(_comm: Any, _task: Any) -> None:
        nonlocal first_runs
        first_runs += 1
        started.set()
        await trio.sleep_forever()

    async with open_comm() as sender:
        handle = await sender.task_send("handed back")
        with trio.fail_after(DEADLINE):
            async with open_comm(task_lease=LEASE) as worker:
                await worker.add_task_subscriber(never_finishes)
                await started.wait()
                keeper = worker._default_queue._lease_keeper
                assert keeper is not None
                while True:  # nothing to wait on for the move onto a lease: polled
                    if keeper._running:
                        break
                    await trio.sleep(LEASE / 10)
            async with open_comm() as second:
                seen: list[bool] = []

                def finish(_c: Any, task: str) -> str:
                    seen.append(kiwitrio.current_delivery().redelivered)
                    return f"finished {task}"

                await second.add_task_subscriber(finish)
                assert await handle == "finished handed back"
    assert first_runs == 1
    assert seen == [True]


async def test_orphaned_lease_comes_back_when_its_worker_vanishes(
    open_comm: OpenComm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that stops renewing (as if killed): its last copy expires into the queue."""
    started = trio.Event()

    async def stuck(_comm: Any, _task: Any) -> None:
        started.set()
        await trio.sleep_forever()

    async with open_comm() as sender, open_comm() as rescuer:
        handle = await sender.task_send("orphan")
        with trio.fail_after(DEADLINE):
            async with open_comm(task_lease=LEASE) as worker:
                ident = await worker.add_task_subscriber(stuck)
                await started.wait()
                await worker.remove_task_subscriber(ident)  # take no more tasks
                keeper = worker._default_queue._lease_keeper
                assert keeper is not None
                adopted = trio.Event()
                adopt = keeper.adopt

                async def adopt_then_die(delivery: Any) -> str:
                    lease_id = await adopt(delivery)
                    adopted.set()
                    return lease_id

                async def no_renewal() -> None:
                    await trio.lowlevel.checkpoint()

                monkeypatch.setattr(keeper, "adopt", adopt_then_die)
                monkeypatch.setattr(keeper, "_renew", no_renewal)  # the worker "died"
                await adopted.wait()
                seen: list[bool] = []

                def rescue(_c: Any, task: str) -> str:
                    seen.append(kiwitrio.current_delivery().redelivered)
                    return f"rescued {task}"

                await rescuer.add_task_subscriber(rescue)
                assert await handle == "rescued orphan"
                assert seen == [True]
