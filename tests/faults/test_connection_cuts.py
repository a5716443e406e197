"""Scenario 1: every client connection cut, again and again, in the middle of a workload.

Four worker processes and three senders reach the shared broker only through a TCP proxy
owned by the test; the proxy aborts every connection through it every half second, eight
times, while tasks, results, RPCs and broadcasts flow. The broker itself is never touched.

Promised: no task is lost (each result handle resolves exactly once, with the right value);
a task may run twice (at least once: a worker's ack or a sender's confirm was lost with the
connection), which is counted from the workers' logs and reported.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import trio

from ..conftest import Names
from ..tcp_proxy import open_tcp_proxy
from .workload import (
    FAST_RECONNECT,
    Figures,
    TaskBook,
    WorkerFleet,
    executed_twice,
    open_senders,
    report,
    traffic_alongside,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(420)]

N_TASKS = 2500
N_WORKERS = 4
N_SENDERS = 3
CUTS = 8
CUT_EVERY = 0.5
#: Simulated work per task, so that tasks are in progress whenever a cut comes.
TASK_SECONDS = 0.03
RESULTS_DEADLINE = 60.0
#: Reconnecting takes well under a second here; a loaded 2-CPU machine with seven client
#: processes can take many times that.
RECONNECT_DEADLINE = 30.0


def make_task(task_id: int) -> dict[str, Any]:
    return {"id": task_id, "sleep": TASK_SECONDS}


@pytest.mark.parametrize("remembered", [False, True],
                         ids=["plain", "with-finished-tasks"])
async def test_connections_cut_repeatedly_mid_stream(
    names: Names, fleet: WorkerFleet, capsys: pytest.CaptureFixture[str], tmp_path: Path,
    remembered: bool,
) -> None:
    """With ``remembered``, the workers share a store of finished tasks (SQLite): a task
    that comes back after it finished is answered from it, and executed_twice drops."""
    began = time.monotonic()
    book = TaskBook()
    connections_cut: list[int] = []
    resolved_at_cut: list[int] = []
    async with open_tcp_proxy() as proxy:
        store = tmp_path / "finished.db" if remembered else None
        workers = await fleet.spawn_many(N_WORKERS, proxy.url(), prefetch=4,
                                         finished_tasks=store)
        async with open_senders(proxy.url(), names, N_SENDERS, fleet,
                                reconnect=FAST_RECONNECT) as senders, \
                traffic_alongside(senders[0], fleet) as (rpc, broadcasts):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(book.send_all, senders, range(N_TASKS), make_task)
                with trio.fail_after(30):
                    await book.wait_resolved(N_TASKS // 20)  # the workload is under way
                for cut in range(CUTS):
                    resolved_at_cut.append(book.resolved)
                    seen = proxy.connections_seen
                    connections_cut.append(proxy.cut())
                    await trio.sleep(CUT_EVERY)
                    # Every client is back (a new connection each) before the next cut.
                    with trio.move_on_after(RECONNECT_DEADLINE):
                        await proxy.wait_for_connections(seen + N_WORKERS + N_SENDERS)
                    back = proxy.connections_seen - seen
                    assert back >= N_WORKERS + N_SENDERS, (
                        f"after cut {cut + 1}, {back} of {N_WORKERS + N_SENDERS} clients "
                        f"reconnected within {RECONNECT_DEADLINE} s; sender states "
                        f"{[s.connection_state for s in senders]}; worker states "
                        f"{[w.states()[-3:] for w in workers]}\n{fleet.describe()}")
            await book.wait_all(RESULTS_DEADLINE)
        returncodes = await fleet.stop_all()

    completed, problems = book.check(fleet.pids)
    completions = fleet.completions()
    reconnects = {w.name: w.states().count("reconnecting") for w in workers}
    figures = Figures(
        "connection-cuts" + (" (finished tasks remembered)" if remembered else ""),
        sent=book.sent, completed=completed, lost=book.sent - completed,
        executed_twice=executed_twice(completions),
        extra={
            "cuts": CUTS, "connections_cut": sum(connections_cut),
            "resolved_at_last_cut": resolved_at_cut[-1],
            "worker_reconnects": sum(reconnects.values()),
            "rpc_ok": rpc.ok, "rpc_unroutable": rpc.unroutable, "rpc_timeouts": rpc.timeouts,
            "broadcasts_sent": broadcasts.sent,
            "broadcasts_seen": sum(w.broadcasts_seen() for w in workers),
            "duration_s": time.monotonic() - began,
        },
    )
    report(figures, capsys)

    assert book.send_errors == []
    assert book.sent == N_TASKS
    assert problems == [], problems[:20]
    assert figures.lost == 0
    assert set(completions) >= set(book.handles), "a result came for a task no worker logged"
    # The cuts really hit the workload in flight, and every worker lived through them.
    assert resolved_at_cut[-1] < N_TASKS, "the workload ended before the cuts did"
    assert connections_cut[0] == N_WORKERS + N_SENDERS, connections_cut
    assert all(count >= 1 for count in connections_cut), connections_cut
    assert all(count >= 1 for count in reconnects.values()), reconnects
    assert returncodes == {w.name: 0 for w in workers}, fleet.describe()
    assert rpc.errors == [], rpc.errors[:10]
    assert rpc.ok > 0
    assert all(w.broadcasts_seen() > 0 for w in workers), fleet.describe()
