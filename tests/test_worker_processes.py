"""Tasks worked on by separate worker processes, against the real broker.

Each worker is ``tests/worker_process.py`` in a subprocess: it subscribes to this test's task
queue, prints ``ready`` and logs (fsync'ed) every task it starts and completes. The logs prove
which process completed which task, and that each task was completed exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import pytest
import trio

import kiwitrio

from .conftest import AMQP_URL, Names, delete_queues
from .processes import StoppableProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

WORKER_SCRIPT = Path(__file__).with_name("worker_process.py")

#: Starting a worker means starting Python and connecting to the broker.
READY_TIMEOUT = 20.0
#: A worker asked to stop (SIGTERM) closes its communicator: a few seconds at most.
STOP_TIMEOUT = 10.0


def _open_for_writing(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)


class WorkerProcess(StoppableProcess):
    """One running ``tests/worker_process.py``."""

    def __init__(self, name: str, process: trio.Process, log_path: Path,
                 stderr_path: Path) -> None:
        super().__init__(process)
        self.name = name
        self.log_path = log_path
        self.stderr_path = stderr_path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_lines(self) -> list[str]:
        try:
            return self.log_path.read_text().splitlines()
        except FileNotFoundError:
            return []

    def done_ids(self) -> list[int]:
        return [int(line.split()[1]) for line in self.log_lines() if line.startswith("done ")]

    def describe(self) -> str:
        """What the worker logged and wrote to stderr, for assertion messages."""
        try:
            stderr = self.stderr_path.read_text()
        except FileNotFoundError:
            stderr = ""
        return (f"worker {self.name} (pid {self.pid}, returncode {self.process.returncode})\n"
                f"log: {self.log_lines()[-20:]}\nstderr:\n{stderr[-4000:]}")

    async def wait_ready(self, seconds: float = READY_TIMEOUT) -> None:
        """Wait up to ``seconds`` for the ``ready`` line the worker prints once subscribed."""
        assert self.process.stdout is not None
        received = b""
        try:
            with trio.fail_after(seconds):
                while b"\n" not in received:
                    chunk = await self.process.stdout.receive_some()
                    if not chunk:
                        await self.process.wait()
                        raise AssertionError(f"exited before it was ready: {self.describe()}")
                    received += chunk
        except trio.TooSlowError:
            raise AssertionError(f"not ready after {seconds}s: {self.describe()}") from None
        assert received == b"ready\n", f"unexpected output {received!r}: {self.describe()}"

    async def wait_for_log_line(self, line: str, seconds: float) -> None:
        """Poll the log until ``line`` is in it (or fail after ``seconds``)."""
        try:
            with trio.fail_after(seconds):
                while line not in self.log_lines():
                    if self.process.poll() is not None:
                        raise AssertionError(f"exited before logging {line!r}: "
                                             f"{self.describe()}")
                    await trio.sleep(0.05)
        except trio.TooSlowError:
            raise AssertionError(f"{line!r} not logged after {seconds}s: "
                                 f"{self.describe()}") from None

    async def stop(self, grace: float = STOP_TIMEOUT) -> int:
        return await super().stop(grace)


class WorkerPool:
    """Starts worker processes for one test; :meth:`stop_all` ends whatever is left."""

    def __init__(self, tmp_path: Path, names: Names) -> None:
        self._dir = tmp_path
        self._names = names
        self.workers: list[WorkerProcess] = []

    async def spawn(self, name: str, *, prefetch: int = 1, block_slow: bool = False,
                    wait_ready: bool = True) -> WorkerProcess:
        log_path = self._dir / f"{name}.log"
        stderr_path = self._dir / f"{name}.stderr"
        command = [
            sys.executable, str(WORKER_SCRIPT),
            "--url", AMQP_URL,
            "--message-exchange", self._names.message_exchange,
            "--task-exchange", self._names.task_exchange,
            "--task-queue", self._names.task_queue,
            "--prefetch", str(prefetch),
            "--log", str(log_path),
            "--exit-on-stdin-eof",  # so that a worker never outlives a crashed test run
        ]
        if block_slow:
            command.append("--block-slow")
        stderr_fd = _open_for_writing(stderr_path)
        try:
            process = await trio.lowlevel.open_process(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr_fd
            )
        finally:
            os.close(stderr_fd)
        worker = WorkerProcess(name, process, log_path, stderr_path)
        self.workers.append(worker)
        if wait_ready:
            await worker.wait_ready()
        return worker

    async def stop_all(self) -> dict[str, int]:
        """SIGTERM every worker at once, then reap them (killing stragglers)."""
        for worker in self.workers:
            worker.terminate()
        return {worker.name: await worker.stop() for worker in self.workers}


@pytest.fixture
async def workers(tmp_path: Path, names: Names) -> AsyncIterator[WorkerPool]:
    pool = WorkerPool(tmp_path, names)
    try:
        yield pool
    finally:
        await pool.stop_all()
        with trio.CancelScope(shield=True), trio.fail_after(15):
            await delete_queues(AMQP_URL, {names.task_queue}, names)


async def test_1000_tasks_over_4_worker_processes(names: Names, workers: WorkerPool) -> None:
    n_tasks = 1000
    started = [await workers.spawn(f"w{i}", prefetch=8, wait_ready=False) for i in range(4)]
    for worker in started:
        await worker.wait_ready()
    pids = {worker.pid for worker in started}

    results: dict[int, Any] = {}
    sending = trio.CapacityLimiter(100)
    async with kiwitrio.open_communicator(AMQP_URL, **names.kwargs()) as comm:

        async def run_task(task_id: int) -> None:
            async with sending:
                handle = await comm.task_send({"id": task_id})
            results[task_id] = await handle

        with trio.fail_after(45):
            async with trio.open_nursery() as nursery:
                for task_id in range(n_tasks):
                    nursery.start_soon(run_task, task_id)

    assert sorted(results) == list(range(n_tasks))
    for task_id, result in results.items():
        assert isinstance(result, dict), result
        assert result["pid"] in pids, result
        assert result == {"id": task_id, "square": task_id * task_id, "pid": result["pid"]}

    # Every worker exits cleanly on SIGTERM; only then are the logs complete.
    assert await workers.stop_all() == {worker.name: 0 for worker in started}

    completions = Counter(task_id for worker in started for task_id in worker.done_ids())
    assert sorted(completions) == list(range(n_tasks)), "some tasks were never completed"
    assert [task_id for task_id, count in completions.items() if count != 1] == [], (
        "some tasks were completed more than once"
    )
    # The process that logged a task is the one whose pid came back in its result.
    for worker in started:
        for task_id in worker.done_ids():
            assert results[task_id]["pid"] == worker.pid, (task_id, worker.name)
    per_worker = {worker.name: len(worker.done_ids()) for worker in started}
    assert sum(1 for count in per_worker.values() if count > 0) >= 2, per_worker
    assert sum(per_worker.values()) == n_tasks
    for worker in started:
        assert worker.log_lines()[-1] == "stopped SIGTERM", worker.describe()


async def _slow_task_taken_over(names: Names, workers: WorkerPool, *,
                                stop_first: Literal["kill", "term"]) -> None:
    """Worker A starts a slow task and blocks; it is stopped (``stop_first``: "kill" for
    SIGKILL, "term" for SIGTERM) and worker B, started after A took the task, completes it."""
    task_id = 42
    worker_a = await workers.spawn("a", prefetch=1, block_slow=True)
    async with kiwitrio.open_communicator(AMQP_URL, **names.kwargs()) as comm:
        handle = await comm.task_send({"id": task_id, "slow": True})
        await worker_a.wait_for_log_line(f"started {task_id}", seconds=10)
        # Only now does B exist, so A was the one that got the task.
        worker_b = await workers.spawn("b", prefetch=1, block_slow=False)
        assert not handle.done()
        assert worker_b.log_lines() == []

        if stop_first == "kill":
            worker_a.process.kill()
            with trio.fail_after(10):
                returncode = await worker_a.process.wait()
            assert returncode == -signal.SIGKILL
        else:
            worker_a.terminate()
            with trio.fail_after(STOP_TIMEOUT):
                returncode = await worker_a.process.wait()
            assert returncode == 0, worker_a.describe()

        try:
            with trio.fail_after(15):
                result = await handle
        except trio.TooSlowError:
            raise AssertionError(f"no result: {worker_b.describe()}") from None

    assert result == {"id": task_id, "square": task_id * task_id, "pid": worker_b.pid}
    assert worker_b.log_lines() == [f"started {task_id}", f"done {task_id}"]
    expected_a = [f"started {task_id}"]
    if stop_first == "term":
        expected_a.append("stopped SIGTERM")
    assert worker_a.log_lines() == expected_a
    assert await worker_b.stop() == 0, worker_b.describe()


async def test_sigkilled_worker_task_is_completed_by_another(
    names: Names, workers: WorkerPool
) -> None:
    await _slow_task_taken_over(names, workers, stop_first="kill")


async def test_sigtermed_worker_gives_task_back_to_another(
    names: Names, workers: WorkerPool
) -> None:
    await _slow_task_taken_over(names, workers, stop_first="term")
