"""Scenario 3: worker processes SIGKILLed in the middle of tasks.

Four worker processes (prefetch 4) work through 1600 tasks from three senders on the shared
broker (3000 on a sqlite file the processes share), with RPCs and broadcasts alongside. Every
40th task takes 1.5 s, so that a worker can be caught in the middle of one: twice, the test
waits until a worker's log shows such a task started and not finished, SIGKILLs it and starts
a replacement.

Promised: the broker redelivers what a dead worker had not acknowledged, so nothing is lost;
only those tasks can run twice (a worker may die after its result went out but before its
ack), so "executed twice" is at most the number of tasks the killed workers held.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio

from ..conftest import BACKENDS, Names, test_url
from .workload import (
    Figures,
    TaskBook,
    WorkerFleet,
    WorkerProc,
    executed_twice,
    open_senders,
    report,
    traffic_alongside,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(150)]

N_TASKS = 1600
#: On sqlite, where the worker processes share a file: more tasks, as the issue asks
#: ("thousands"), at about 10 s more.
N_TASKS_SQLITE = 3000
N_WORKERS = 4
N_SENDERS = 3
PREFETCH = 4
TASK_SECONDS = 0.01
LONG_EVERY = 40
LONG_SECONDS = 1.5
#: Kill a worker when this share of the results is in (one kill per entry).
KILL_AT = (0.2, 0.5)
RESULTS_DEADLINE = 60.0


def is_long(task_id: int) -> bool:
    return task_id % LONG_EVERY == LONG_EVERY - 1


def make_task(task_id: int) -> dict[str, Any]:
    return {"id": task_id, "sleep": LONG_SECONDS if is_long(task_id) else TASK_SECONDS}


def in_a_long_task(worker: WorkerProc) -> bool:
    return any(is_long(task_id) for task_id in worker.in_flight_ids())


@pytest.fixture(params=[b for b in BACKENDS if b != "memory"])
def url(request: pytest.FixtureRequest, names: Names) -> str:
    """RabbitMQ, and the sqlite file (which the worker processes share as they would a
    broker)."""
    return test_url(request, names)


async def test_sigkilled_workers_tasks_are_finished_elsewhere(
    names: Names, fleet: WorkerFleet, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    began = time.monotonic()
    n_tasks = N_TASKS_SQLITE if url.startswith("sqlite:") else N_TASKS
    book = TaskBook()
    victims: list[WorkerProc] = []
    replacements: list[WorkerProc] = []
    in_flight_at_kill: dict[str, set[int]] = {}
    workers = await fleet.spawn_many(N_WORKERS, url, prefetch=PREFETCH,
                                     reconnect_fast=False)
    async with open_senders(url, names, N_SENDERS, fleet) as senders, \
            traffic_alongside(senders[0], fleet) as (rpc, broadcasts):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(book.send_all, senders, range(n_tasks), make_task)
            for number, share in enumerate(KILL_AT):
                with trio.fail_after(30):
                    await book.wait_resolved(int(n_tasks * share))
                victim = workers[number]
                await victim.wait_for(in_a_long_task, "in the middle of a long task", 20)
                await victim.kill()
                victims.append(victim)
                # Its log is fsync'ed line by line: complete up to the kill.
                in_flight_at_kill[victim.name] = victim.in_flight_ids()
                replacements.append(await fleet.spawn(
                    f"replacement{number}", url, prefetch=PREFETCH,
                    reconnect_fast=False, wait_ready=False))
            resolved_at_last_kill = book.resolved
        await book.wait_all(RESULTS_DEADLINE)
        for replacement in replacements:
            await replacement.wait_ready()  # long since, normally: the line is in the pipe
    returncodes = await fleet.stop_all()

    completed, problems = book.check(fleet.pids)
    completions = fleet.completions()
    twice = {task_id for task_id, count in completions.items() if count > 1}
    # What each killed worker held unacknowledged: the tasks it had started that a worker
    # still alive after its death then completed (the broker redelivers only unacknowledged
    # tasks). Workers killed before it do not count: it may have got their tasks.
    taken_over: dict[str, set[int]] = {}
    for index, victim in enumerate(victims):
        later = [w for w in fleet.workers if w is not victim and w not in victims[:index]]
        elsewhere = {task_id for worker in later for task_id in worker.done_ids()}
        taken_over[victim.name] = set(victim.started_ids()) & elsewhere
    killed_in_flight = sum(len(ids) for ids in taken_over.values())
    figures = Figures(
        f"worker-kill[{url.partition(':')[0]}]", sent=book.sent, completed=completed,
        lost=book.sent - completed,
        executed_twice=executed_twice(completions),
        extra={
            "workers_killed": len(victims),
            "killed_in_flight": killed_in_flight,
            "started_not_done_at_kill": sum(len(ids) for ids in in_flight_at_kill.values()),
            "resolved_at_last_kill": resolved_at_last_kill,
            "rpc_ok": rpc.ok, "rpc_unroutable": rpc.unroutable, "rpc_timeouts": rpc.timeouts,
            "broadcasts_sent": broadcasts.sent,
            "broadcasts_seen": sum(w.broadcasts_seen() for w in fleet.workers),
            "duration_s": time.monotonic() - began,
        },
    )
    report(figures, capsys)

    assert book.send_errors == []
    assert book.sent == n_tasks
    assert problems == [], problems[:20]
    assert figures.lost == 0
    assert set(completions) >= set(book.handles), "a result came for a task no worker logged"
    assert resolved_at_last_kill < n_tasks, "the workload ended before the kills"
    for victim in victims:
        # Killed mid-task: what it had started and not finished was finished elsewhere ...
        assert in_flight_at_kill[victim.name], victim.describe()
        assert in_flight_at_kill[victim.name] <= taken_over[victim.name], victim.describe()
        # ... and it never held more than its prefetch window.
        assert len(taken_over[victim.name]) <= PREFETCH, (victim.name, taken_over)
    # Only tasks a killed worker held ran twice.
    assert twice <= set().union(*taken_over.values()), (twice, taken_over)
    assert figures.executed_twice <= killed_in_flight
    survivors = [w for w in fleet.workers if w not in victims]
    assert all(returncodes[w.name] == 0 for w in survivors), fleet.describe()
    assert rpc.errors == [], rpc.errors[:10]
    assert rpc.ok > 0
    # An RPC on its way to a worker when it died is never answered: at most one per kill.
    assert rpc.timeouts <= len(victims)
    assert all(w.broadcasts_seen() > 0 for w in workers if w not in victims)
