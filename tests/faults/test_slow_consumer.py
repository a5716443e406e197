"""Scenario 5: slow, blocking subscribers with a full prefetch window, and 1 s heartbeats.

Three worker processes subscribe a plain (blocking) function with prefetch 4 and heartbeat
1 s. The first wave of tasks blocks its threads until the test releases them, then for 2.5 s
more (more than twice the heartbeat interval), filling every worker's prefetch window; while
every window is full (held there, whatever the machine's load), another communicator's RPCs
to each worker must be answered promptly. Then 600 quick tasks follow, with a blocking one now
and then.

Promised: blocking subscribers run in threads, so the connection's heartbeats go on (each
worker stays CONNECTED throughout), nobody starves (every task completes, RPCs are answered
meanwhile), and with no connection lost no task runs twice.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio

import kiwitrio

from ..conftest import AMQP_URL, Names
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

HEARTBEAT = 1.0
BLOCK_SECONDS = 2.5  # > 2 x HEARTBEAT
N_WORKERS = 3
PREFETCH = 4
FIRST_WAVE = 2 * N_WORKERS * PREFETCH  # every window full, twice over
N_QUICK = 600
BLOCK_EVERY = 50
QUICK_SECONDS = 0.005
N_SENDERS = 2
#: An RPC answered within this is not stuck behind the blocked tasks.
RPC_PROMPT = 1.0
RESULTS_DEADLINE = 60.0


def make_task(task_id: int) -> dict[str, Any]:
    first_wave = task_id < FIRST_WAVE
    blocking = first_wave or task_id % BLOCK_EVERY == 0
    return {"id": task_id, "sleep": BLOCK_SECONDS if blocking else QUICK_SECONDS,
            "hold": first_wave}


def window_full(worker: WorkerProc) -> bool:
    return len(worker.in_flight_ids()) >= PREFETCH


async def test_blocking_subscribers_keep_heartbeats_and_nobody_starves(
    names: Names, fleet: WorkerFleet, capsys: pytest.CaptureFixture[str]
) -> None:
    began = time.monotonic()
    book = TaskBook()
    sender_states: list[kiwitrio.ConnectionState] = []
    prompt_rpcs: list[float] = []
    full_windows_still_full = False
    workers = await fleet.spawn_many(N_WORKERS, AMQP_URL, prefetch=PREFETCH, sync=True,
                                     heartbeat=HEARTBEAT, reconnect_fast=False,
                                     hold_until_released=True)
    async with open_senders(AMQP_URL, names, N_SENDERS, fleet, heartbeat=HEARTBEAT,
                            on_connection_state=sender_states.append) as senders, \
            open_senders(AMQP_URL, names, 1, fleet, heartbeat=HEARTBEAT) as (caller,), \
            traffic_alongside(senders[0], fleet) as (rpc, broadcasts):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(book.send_all, senders, range(FIRST_WAVE + N_QUICK), make_task)
            # Every worker's window is full of blocked tasks: RPCs from another
            # communicator are still answered at once, by every worker.
            with trio.fail_after(30):
                for worker in workers:
                    await worker.wait_for(window_full, "with a full prefetch window", 30)
            for worker in workers:
                assert worker.rpc_id is not None
                for n in range(3):
                    sent_at = time.monotonic()
                    with trio.fail_after(RPC_PROMPT):
                        answer = await (await caller.rpc_send(worker.rpc_id, n))
                    assert answer == {"echo": n, "pid": worker.pid}
                    prompt_rpcs.append(time.monotonic() - sent_at)
            full_windows_still_full = all(window_full(worker) for worker in workers)
            for worker in workers:
                await worker.release()
        await book.wait_all(RESULTS_DEADLINE)
    returncodes = await fleet.stop_all()

    completed, problems = book.check(fleet.pids)
    completions = fleet.completions()
    states = {w.name: w.states() for w in workers}
    figures = Figures(
        "slow-consumer", sent=book.sent, completed=completed, lost=book.sent - completed,
        executed_twice=executed_twice(completions),
        extra={
            "blocking_tasks": sum(1 for i in book.handles if make_task(i)["sleep"] > 1),
            "block_s": BLOCK_SECONDS, "heartbeat_s": HEARTBEAT,
            "rpcs_while_full": len(prompt_rpcs),
            "max_rpc_latency_while_full_s": max(prompt_rpcs, default=0.0),
            "rpc_ok": rpc.ok, "rpc_timeouts": rpc.timeouts,
            "max_rpc_latency_s": rpc.max_latency,
            "broadcasts_sent": broadcasts.sent,
            "broadcasts_seen": sum(w.broadcasts_seen() for w in workers),
            "duration_s": time.monotonic() - began,
        },
    )
    report(figures, capsys)

    assert book.send_errors == []
    assert book.sent == FIRST_WAVE + N_QUICK
    assert problems == [], problems[:20]
    assert figures.lost == 0
    assert figures.executed_twice == 0, sorted(i for i, c in completions.items() if c > 1)
    assert set(completions) == set(book.handles)
    assert full_windows_still_full, "the windows emptied while the RPCs were made"
    assert len(prompt_rpcs) == 3 * N_WORKERS
    # Heartbeats kept: no worker and no sender ever left CONNECTED.
    for name, worker_states in states.items():
        assert [s for s in worker_states if s != "closed"] == ["connected"], (
            name, worker_states)
    assert sender_states == [kiwitrio.ConnectionState.CONNECTED,
                             kiwitrio.ConnectionState.CONNECTED,
                             kiwitrio.ConnectionState.CLOSED,
                             kiwitrio.ConnectionState.CLOSED]
    for worker in workers:
        assert "lost the connection" not in worker.stderr(), worker.describe()
    assert returncodes == {w.name: 0 for w in workers}, fleet.describe()
    assert rpc.errors == [], rpc.errors[:10]
    assert rpc.timeouts == 0
    assert rpc.ok > 0
    assert all(w.broadcasts_seen() > 0 for w in workers)
