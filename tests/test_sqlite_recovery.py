"""A sqlite communicator that the others declared dead comes back (issue 16).

A worker process that hangs longer than the liveness timeout (here: SIGSTOPped) is declared
dead by the other connections to the file: the tasks it held go back to the queue, its
exclusive queues (its RPC subscriber's) are deleted. When it runs again, its communicator
must notice and come back as an AMQP one does after a connection loss: a new connection,
subscribers restored, and no task lost.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio

import kiwitrio

from .conftest import SQLITE_ENABLED

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(not SQLITE_ENABLED, reason="KIWITRIO_TEST_SQLITE=0"),
              pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")]

#: Short, so that the test waits seconds, not the default 30 s.
LIVENESS = 2.0
#: How long a step the test expects may take on a loaded 2-CPU machine.
STEP = 20.0
RPC_ID = "the-worker"

WORKER = textwrap.dedent("""
    import os, sys, trio, kiwitrio

    async def main(url, rpc_id):
        async with kiwitrio.open_communicator(url) as comm:
            await comm.add_task_subscriber(lambda _comm, number: [number, os.getpid()])
            await comm.add_rpc_subscriber(lambda _comm, _msg: os.getpid(), rpc_id)
            print("ready", flush=True)
            await trio.sleep_forever()

    trio.run(main, sys.argv[1], sys.argv[2])
""")


@contextlib.asynccontextmanager
async def worker_process(url: str) -> AsyncIterator[trio.Process]:
    """A worker process, ready (its subscribers added); killed at the end."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", WORKER, url, RPC_ID], stdout=subprocess.PIPE)
    assert process.stdout is not None
    try:
        with trio.fail_after(STEP):
            seen = b""
            while b"ready" not in seen:
                chunk = await process.stdout.receive_some()
                assert chunk, "the worker exited before it was ready"
                seen += chunk
        yield process
    finally:
        with trio.CancelScope(shield=True):
            process.send_signal(signal.SIGCONT)  # a stopped process cannot die of SIGKILL
            process.kill()
            await process.wait()
            await process.stdout.aclose()


def connections_of(path: Path, pid: int) -> list[str]:
    """The ids of the worker's connection rows in the file."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        return [row[0] for row in db.execute("SELECT id FROM connections WHERE pid = ?", [pid])]


async def wait_until(check: Callable[[], bool]) -> None:
    """Poll the file until ``check()`` holds, for at most STEP seconds (another process
    changes it: there is no event to wait for)."""
    with trio.fail_after(STEP):
        while not check():  # noqa: ASYNC110
            await trio.sleep(0.05)


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


def _stop_holding_the_lock(path: Path, pid: int) -> None:
    """SIGSTOP the process while this thread holds the file's write lock, so that it is not
    stopped inside a write transaction: then it would hold the lock, and every process on
    the file would wait for it (the limit docs/backends.md states)."""
    with contextlib.closing(sqlite3.connect(path, timeout=STEP, isolation_level=None)) as db:
        db.execute("BEGIN IMMEDIATE")
        try:
            os.kill(pid, signal.SIGSTOP)
            deadline = time.monotonic() + STEP
            while _state(pid) != "T" and time.monotonic() < deadline:
                time.sleep(0.001)
        finally:
            db.execute("ROLLBACK")


async def stop(path: Path, process: trio.Process) -> None:
    # In a thread: this process's own sessions may hold the lock meanwhile.
    await trio.to_thread.run_sync(_stop_holding_the_lock, path, process.pid)


async def test_a_worker_declared_dead_comes_back_and_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "kt.db"
    url = f"sqlite://{path}?liveness={LIVENESS}&poll=0.2"
    async with kiwitrio.open_communicator(url) as client, worker_process(url) as worker:
        with trio.fail_after(STEP):
            assert await (await client.rpc_send(RPC_ID, "ping")) == worker.pid
            assert await (await client.task_send(-1)) == [-1, worker.pid]
        [first_connection] = connections_of(path, worker.pid)

        # Tasks in flight as it stops (some may be held by it), and more while it is stopped.
        results = [await client.task_send(number) for number in range(10)]
        await stop(path, worker)
        results += [await client.task_send(number) for number in range(10, 30)]

        # Past the liveness timeout, the client's session declares the worker dead.
        await wait_until(lambda: not connections_of(path, worker.pid))
        with pytest.raises(kiwitrio.UnroutableError):
            await client.rpc_send(RPC_ID, "ping")

        worker.send_signal(signal.SIGCONT)
        # It comes back with a new connection, and its subscribers with it.
        await wait_until(lambda: connections_of(path, worker.pid) not in (
            [], [first_connection]))
        with trio.fail_after(STEP):
            while True:
                try:
                    pid = await (await client.rpc_send(RPC_ID, "ping"))
                    break
                except kiwitrio.UnroutableError:  # its RPC queue is being declared again
                    await trio.sleep(0.05)
            assert pid == worker.pid
            assert [await result for result in results] == [
                [number, worker.pid] for number in range(30)]
            assert await (await client.task_send(30)) == [30, worker.pid]
