"""Scenario: a task that kills every worker that takes it, on a quorum queue.

Four worker processes share a quorum task queue with ``delivery_limit=2`` while three
senders send 400 ordinary tasks and one that SIGKILLs its worker. The poison task takes
three workers down (its first delivery and two redeliveries); the fourth worker gets its
fourth delivery, past the limit, and dead-letters it unrun, saying why in its log, and its
sender gets a RemoteException instead of waiting for ever.

Promised: every ordinary task completes (lost = 0, each result once, from a worker); the
poison task runs at most delivery_limit + 1 times and ends in the dead-letter queue.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio

import kiwitrio
import kiwitrio.lowlevel

from ..conftest import AMQP_URL, Names
from .workload import Figures, TaskBook, WorkerFleet, executed_twice, open_senders, report

pytestmark = [pytest.mark.faults, pytest.mark.timeout(150)]

N_TASKS = 400
N_WORKERS = 4
N_SENDERS = 3
DELIVERY_LIMIT = 2
POISON = N_TASKS  # the id of the task that kills its workers
RESULTS_DEADLINE = 60.0
QUORUM = {"queue_type": "quorum", "delivery_limit": DELIVERY_LIMIT}


def make_task(task_id: int) -> dict[str, Any]:
    return {"id": task_id, "sleep": 0.005}


async def dead_letters(comm: kiwitrio.Communicator, count: int, seconds: float) -> None:
    """Wait until the default queue's dead-letter queue holds ``count`` messages."""
    session = kiwitrio.lowlevel.session_of(comm)
    dead_letter_queue = f"{comm.default_queue.name}.dead-letter"
    with trio.fail_after(seconds):
        while True:  # nothing to wait on for a dead letter's arrival: polled
            stats = await session.inspect_queue(dead_letter_queue)
            if stats is not None and stats.messages >= count:
                return
            await trio.sleep(0.1)


async def test_a_task_that_kills_its_workers_is_dead_lettered_after_its_limit(
    names: Names, fleet: WorkerFleet, capsys: pytest.CaptureFixture[str]
) -> None:
    began = time.monotonic()
    book = TaskBook()
    # One task at a time: a killed worker's other prefetched tasks would count a delivery
    # each time too, and an ordinary task that kept arriving with the poison one could reach
    # the limit as well (docs/deployment.md, poison tasks).
    workers = await fleet.spawn_many(N_WORKERS, AMQP_URL, prefetch=1, rpc=False,
                                     broadcasts=False, **QUORUM)
    async with open_senders(AMQP_URL, names, N_SENDERS, fleet, **QUORUM) as senders:
        poison = await senders[0].task_send({"id": POISON, "crash": True})
        with trio.fail_after(RESULTS_DEADLINE):
            await book.send_all(senders, range(N_TASKS), make_task)
            await book.wait_all(RESULTS_DEADLINE)
            with pytest.raises(kiwitrio.RemoteException) as told:
                await poison
        await dead_letters(senders[0], 1, RESULTS_DEADLINE)
    alive = [w for w in workers if w.process.poll() is None]
    returncodes = await fleet.stop_all()

    completed, problems = book.check(fleet.pids)
    poison_runs = sum(w.started_ids().count(POISON) for w in workers)
    refusals = [w for w in workers if "dead-lettering" in w.stderr()]
    figures = Figures(
        "poison-task", sent=book.sent, completed=completed, lost=book.sent - completed,
        executed_twice=executed_twice(fleet.completions()),
        extra={"delivery_limit": DELIVERY_LIMIT, "poison_runs": poison_runs,
               "workers_killed": N_WORKERS - len(alive),
               "duration_s": time.monotonic() - began},
    )
    report(figures, capsys)

    assert problems == [], problems[:20]
    assert figures.lost == 0
    assert told.value.remote_type == "DeliveryLimitExceeded"
    assert poison_runs == DELIVERY_LIMIT + 1  # its first delivery and two redeliveries
    assert len(alive) == N_WORKERS - poison_runs
    assert len(refusals) == 1 and refusals[0] in alive, fleet.describe()
    assert f"more than delivery_limit ({DELIVERY_LIMIT}) allows" in refusals[0].stderr()
    assert all(returncodes[w.name] == 0 for w in alive), fleet.describe()
