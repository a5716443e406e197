"""The workload of the fault-injection scenarios, and its bookkeeping.

- :class:`WorkerFleet` runs ``tests/worker_process.py`` in subprocesses (tasks, an RPC
  subscriber and a broadcast subscriber each) and reads their fsync'ed logs afterwards: which
  process started and completed which task, which broadcasts it saw, its connection states.
- :class:`TaskBook` sends tasks from several sender communicators with a bounded number
  outstanding, and records every result handle and how often it resolved.
- :func:`rpc_loop` and :func:`broadcast_loop` keep RPCs and broadcasts flowing meanwhile.
- :class:`Figures` is the line each scenario prints at the end: tasks sent, completed
  (result received), lost, executed twice (from the worker logs), and the scenario's extras.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

import kiwitrio

from ..conftest import Names
from ..processes import StoppableProcess

WORKER_SCRIPT = Path(__file__).resolve().parents[1] / "worker_process.py"

#: Starting a worker means starting Python, importing aio-pika and connecting.
READY_TIMEOUT = 30.0
#: A worker asked to stop (SIGTERM) closes its communicator: a few seconds at most.
STOP_GRACE = 10.0

#: Reconnect fast: the scenarios cut connections every half second.
FAST_RECONNECT = kiwitrio.ReconnectPolicy(initial_delay=0.05, max_delay=0.5, jitter=0.05,
                                          startup_give_up_after=60.0)


# -- worker processes ---------------------------------------------------------------------------


class WorkerProc(StoppableProcess):
    """One running ``tests/worker_process.py`` and its log."""

    def __init__(self, name: str, process: trio.Process, log_path: Path, stderr_path: Path,
                 rpc_id: str | None, prefetch: int) -> None:
        super().__init__(process)
        self.name = name
        self.log_path = log_path
        self.stderr_path = stderr_path
        self.rpc_id = rpc_id
        self.prefetch = prefetch
        self.killed = False
        self.ready = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_lines(self) -> list[str]:
        try:
            return self.log_path.read_text().splitlines()
        except FileNotFoundError:
            return []

    def _ids(self, prefix: str) -> list[int]:
        return [int(line.split()[1]) for line in self.log_lines() if line.startswith(prefix)]

    def done_ids(self) -> list[int]:
        return self._ids("done ")

    def started_ids(self) -> list[int]:
        return self._ids("started ")

    def in_flight_ids(self) -> set[int]:
        """Tasks this worker started and has not (yet) completed."""
        return set(self.started_ids()) - set(self.done_ids())

    def broadcasts_seen(self) -> int:
        return sum(1 for line in self.log_lines() if line.startswith("broadcast "))

    def done_before(self, marker: str) -> set[int]:
        """Tasks this worker completed before it first logged ``marker``."""
        done = set()
        for line in self.log_lines():
            if line == marker:
                break
            if line.startswith("done "):
                done.add(int(line.split()[1]))
        return done

    def states(self) -> list[str]:
        return [line.split(" ", 1)[1] for line in self.log_lines() if line.startswith("state ")]

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def describe(self) -> str:
        return (f"worker {self.name} (pid {self.pid}, returncode {self.process.returncode})\n"
                f"log tail: {self.log_lines()[-10:]}\nstderr tail:\n{self.stderr()[-3000:]}")

    async def wait_ready(self, seconds: float = READY_TIMEOUT) -> None:
        """Wait for the ``ready`` line the worker prints once it is connected and subscribed."""
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
            raise AssertionError(f"not ready after {seconds} s: {self.describe()}") from None
        assert received == b"ready\n", f"unexpected output {received!r}: {self.describe()}"
        self.ready = True

    async def wait_for(self, condition: Callable[[WorkerProc], bool], what: str,
                       seconds: float) -> None:
        """Poll the worker's log until ``condition(self)`` holds (or fail after ``seconds``)."""
        try:
            with trio.fail_after(seconds):
                while not condition(self):
                    if self.process.poll() is not None:
                        raise AssertionError(f"exited before {what}: {self.describe()}")
                    await trio.sleep(0.01)
        except trio.TooSlowError:
            raise AssertionError(f"not {what} after {seconds} s: {self.describe()}") from None

    async def release(self) -> None:
        """Let the worker finish the tasks marked ``hold`` (it was spawned with
        ``hold_until_released=True``): now and from then on."""
        assert self.process.stdin is not None
        await self.process.stdin.send_all(b"release\n")

    async def kill(self) -> None:
        """SIGKILL the worker, as a crash would, and reap it."""
        self.killed = True
        self.process.kill()
        with trio.fail_after(STOP_GRACE):
            returncode = await self.process.wait()
        assert returncode == -signal.SIGKILL, self.describe()

    async def stop(self, grace: float = STOP_GRACE) -> int:
        return await super().stop(grace)


class WorkerFleet:
    """The worker processes of one test (see the ``fleet`` fixture)."""

    def __init__(self, tmp_path: Path, names: Names) -> None:
        self._dir = tmp_path
        self.names = names
        self.workers: list[WorkerProc] = []
        #: Queues the test made on the shared broker besides ``names``' own: deleted at the end.
        self.shared_broker_queues: set[str] = set()

    async def spawn(
        self,
        name: str,
        url: str | Sequence[str],
        *,
        prefetch: int = 4,
        sync: bool = False,
        rpc: bool = True,
        broadcasts: bool = True,
        heartbeat: float | None = None,
        reconnect_fast: bool = True,
        startup_give_up_after: float = 60.0,
        hold_until_released: bool = False,
        wait_ready: bool = True,
        finished_tasks: Path | None = None,
        queue_type: str | None = None,
        delivery_limit: int | None = None,
    ) -> WorkerProc:
        log_path = self._dir / f"{name}.log"
        stderr_path = self._dir / f"{name}.stderr"
        rpc_id = f"{self.names.prefix}.{name}" if rpc else None
        urls = [url] if isinstance(url, str) else list(url)
        command = [
            sys.executable, str(WORKER_SCRIPT),
            *(arg for one_url in urls for arg in ("--url", one_url)),
            "--message-exchange", self.names.message_exchange,
            "--task-exchange", self.names.task_exchange,
            "--task-queue", self.names.task_queue,
            "--prefetch", str(prefetch),
            "--log", str(log_path),
            "--exit-on-stdin-eof",  # a worker never outlives a crashed test run
            "--log-starts",
            "--log-states",
        ]
        if sync:
            command.append("--sync")
        if rpc_id is not None:
            command += ["--rpc-id", rpc_id]
        if broadcasts:
            command.append("--broadcasts")
        if heartbeat is not None:
            command += ["--heartbeat", str(heartbeat)]
        if hold_until_released:
            command.append("--hold-until-released")  # see WorkerProc.release
        if finished_tasks is not None:
            command += ["--finished-tasks", str(finished_tasks)]
        if queue_type is not None:
            command += ["--queue-type", queue_type]
        if delivery_limit is not None:
            command += ["--delivery-limit", str(delivery_limit)]
        if reconnect_fast:
            command += ["--reconnect-delay", str(FAST_RECONNECT.initial_delay),
                        "--reconnect-max-delay", str(FAST_RECONNECT.max_delay),
                        "--startup-give-up-after", str(startup_give_up_after)]
        stderr_fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            process = await trio.lowlevel.open_process(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr_fd)
        finally:
            os.close(stderr_fd)
        worker = WorkerProc(name, process, log_path, stderr_path, rpc_id, prefetch)
        self.workers.append(worker)
        if wait_ready:
            await worker.wait_ready()
        return worker

    async def spawn_many(self, count: int, url: str | Sequence[str], *, prefix: str = "w",
                         **options: Any) -> list[WorkerProc]:
        """Start ``count`` workers at once, then wait until every one is ready."""
        started = [await self.spawn(f"{prefix}{i}", url, wait_ready=False, **options)
                   for i in range(count)]
        await wait_all_ready(started)
        return started

    @property
    def pids(self) -> set[int]:
        return {worker.pid for worker in self.workers}

    def rpc_targets(self) -> list[tuple[str, int]]:
        """(identifier, pid) of the live workers' RPC subscribers."""
        return [(w.rpc_id, w.pid) for w in self.workers
                if w.rpc_id is not None and not w.killed and w.process.poll() is None]

    async def stop_all(self) -> dict[str, int]:
        """SIGTERM every worker at once, then reap them all (killing stragglers)."""
        for worker in self.workers:
            worker.terminate()
        return {worker.name: await worker.stop() for worker in self.workers}

    def completions(self) -> Counter[int]:
        """How many times each task was completed, over every worker's log."""
        return Counter(task_id for worker in self.workers for task_id in worker.done_ids())

    def describe(self) -> str:
        return "\n".join(worker.describe() for worker in self.workers)


async def wait_all_ready(workers: Iterable[WorkerProc]) -> None:
    """Wait for every worker's ``ready`` line, all at once."""
    async with trio.open_nursery() as nursery:
        for worker in workers:
            nursery.start_soon(worker.wait_ready)


# -- senders and results -------------------------------------------------------------------------


@asynccontextmanager
async def open_senders(url: str | Sequence[str], names: Names, count: int,
                       fleet: WorkerFleet | None = None,
                       **options: Any) -> AsyncIterator[list[kiwitrio.Communicator]]:
    """``count`` sender communicators on this test's names (their reply queues are deleted at
    the end of the test, by the fleet, even if closing them fails)."""
    async with AsyncExitStack() as stack:
        comms = []
        for _ in range(count):
            comm = await stack.enter_async_context(
                kiwitrio.open_communicator(url, **names.kwargs(), **options))
            if fleet is not None:
                fleet.shared_broker_queues.add(comm._replies.queue_name)
            comms.append(comm)
        yield comms


def expected_result(task_id: int, pid: int) -> dict[str, int]:
    return {"id": task_id, "square": task_id * task_id, "pid": pid}


class TaskBook:
    """Every task sent, its result handle, and how often the handle resolved."""

    def __init__(self) -> None:
        self.handles: dict[int, kiwitrio.ResultHandle] = {}
        self.resolutions: Counter[int] = Counter()
        #: When each resolution came (time.monotonic()), in order: gaps show outages.
        self.resolved_times: list[float] = []
        self.send_errors: list[str] = []
        self._waiters: list[tuple[Callable[[], bool], trio.Event]] = []

    @property
    def sent(self) -> int:
        return len(self.handles)

    @property
    def resolved(self) -> int:
        return len(self.resolutions)

    @property
    def outstanding(self) -> int:
        """Tasks confirmed by the broker and not answered yet."""
        return self.sent - self.resolved

    async def send_all(self, comms: Sequence[kiwitrio.Communicator], task_ids: Iterable[int],
                       make_task: Callable[[int], dict[str, Any]], *,
                       max_outstanding: int = 100) -> None:
        """Send every task, spread over ``comms``, each with at most ``max_outstanding``
        tasks sent and not yet answered; returns once all are sent."""
        ids = list(task_ids)
        async with trio.open_nursery() as nursery:
            for index, comm in enumerate(comms):
                nursery.start_soon(self._sender, comm, ids[index::len(comms)], make_task,
                                   max_outstanding)

    async def _sender(self, comm: kiwitrio.Communicator, ids: list[int],
                      make_task: Callable[[int], dict[str, Any]], max_outstanding: int) -> None:
        outstanding = trio.Semaphore(max_outstanding)
        async with trio.open_nursery() as nursery:
            for task_id in ids:
                await outstanding.acquire()
                nursery.start_soon(self._send_one, comm, task_id, make_task(task_id),
                                   outstanding)

    async def _send_one(self, comm: kiwitrio.Communicator, task_id: int, task: dict[str, Any],
                        outstanding: trio.Semaphore) -> None:
        try:
            handle = await comm.task_send(task)
        except kiwitrio.KiwitrioError as exc:
            self.send_errors.append(f"task {task_id}: {exc!r}")
            outstanding.release()
            return
        self.handles[task_id] = handle
        self._wake()

        def on_done(_handle: kiwitrio.ResultHandle) -> None:
            self.resolutions[task_id] += 1
            self.resolved_times.append(time.monotonic())
            outstanding.release()
            self._wake()

        handle.add_done_callback(on_done)

    def _wake(self) -> None:
        for condition, event in self._waiters:
            if condition():
                event.set()

    async def _wait_until(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition()`` holds; checked whenever a task is sent or answered."""
        if condition():
            await trio.lowlevel.checkpoint()
            return
        event = trio.Event()
        entry = (condition, event)
        self._waiters.append(entry)
        try:
            await event.wait()
        finally:
            self._waiters.remove(entry)

    async def wait_resolved(self, count: int) -> None:
        """Wait until ``count`` handles have resolved."""
        await self._wait_until(lambda: self.resolved >= count)

    async def wait_outstanding(self, count: int) -> None:
        """Wait until ``count`` tasks are confirmed and not answered (:attr:`outstanding`)."""
        await self._wait_until(lambda: self.outstanding >= count)

    async def wait_all(self, seconds: float, *, stall: float = 10.0) -> None:
        """Wait until every handle has resolved, at most ``seconds``, and give up early if
        none resolved for ``stall`` seconds; afterwards the figures say what is missing."""
        with trio.move_on_after(seconds):
            while self.resolved < self.sent:
                with trio.move_on_after(stall) as progress:
                    await self.wait_resolved(self.resolved + 1)
                if progress.cancelled_caught:
                    return

    def unresolved(self) -> list[int]:
        return sorted(task_id for task_id, handle in self.handles.items() if not handle.done())

    def check(self, worker_pids: set[int]) -> tuple[int, list[str]]:
        """(completed, problems): a handle completed if it resolved exactly once with its
        task's result from one of the workers."""
        completed, problems = 0, []
        for task_id, handle in self.handles.items():
            if not handle.done():
                problems.append(f"task {task_id}: no result")
                continue
            if self.resolutions[task_id] != 1:
                problems.append(f"task {task_id}: resolved {self.resolutions[task_id]} times")
                continue
            error = handle.exception()
            if error is not None:
                problems.append(f"task {task_id}: {error!r}")
                continue
            result = handle.result()
            pid = result.get("pid") if isinstance(result, dict) else None
            if pid not in worker_pids or result != expected_result(task_id, pid):
                problems.append(f"task {task_id}: wrong result {result!r}")
                continue
            completed += 1
        return completed, problems


# -- RPCs and broadcasts alongside ----------------------------------------------------------------


@dataclass
class RpcStats:
    ok: int = 0
    unroutable: int = 0
    timeouts: int = 0
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    @property
    def max_latency(self) -> float:
        return max(self.latencies, default=0.0)


async def rpc_loop(comm: kiwitrio.Communicator, targets: Callable[[], list[tuple[str, int]]],
                   stop: trio.Event, stats: RpcStats, *, call_timeout: float = 5.0,
                   pause: float = 0.01) -> None:
    """Call the workers' RPC subscribers in turn until ``stop``; each answer is checked.

    A recipient that is reconnecting is unroutable and a call whose queue vanished with a
    connection is never answered: both are counted and the loop goes on.
    """
    n = 0
    while not stop.is_set():
        current = targets()
        if not current:
            await trio.sleep(pause)
            continue
        identifier, pid = current[n % len(current)]
        n += 1
        began = time.monotonic()
        try:
            with trio.move_on_after(call_timeout) as scope:
                handle = await comm.rpc_send(identifier, n)
                answer = await handle
        except kiwitrio.UnroutableError:
            stats.unroutable += 1
            await trio.sleep(0.05)
            continue
        except kiwitrio.KiwitrioError as exc:
            stats.errors.append(f"rpc {n} to {identifier}: {exc!r}")
            continue
        if scope.cancelled_caught:
            stats.timeouts += 1
            continue
        if answer != {"echo": n, "pid": pid}:
            stats.errors.append(f"rpc {n} to {identifier}: wrong answer {answer!r}")
            continue
        stats.ok += 1
        stats.latencies.append(time.monotonic() - began)
        await trio.sleep(pause)


@dataclass
class BroadcastStats:
    sent: int = 0


async def broadcast_loop(comm: kiwitrio.Communicator, stop: trio.Event, stats: BroadcastStats,
                         *, interval: float = 0.02) -> None:
    """Broadcast ``{"seq": n}`` on ``faults.tick`` every ``interval`` seconds until ``stop``."""
    while not stop.is_set():
        await comm.broadcast_send({"seq": stats.sent}, sender="faults", subject="faults.tick")
        stats.sent += 1
        with trio.move_on_after(interval):
            await stop.wait()


@asynccontextmanager
async def traffic_alongside(comm: kiwitrio.Communicator, fleet: WorkerFleet,
                            **rpc_options: Any) -> AsyncIterator[tuple[RpcStats, BroadcastStats]]:
    """RPCs to the fleet's workers and broadcasts from ``comm`` for the duration of the block."""
    stop = trio.Event()
    rpc, broadcasts = RpcStats(), BroadcastStats()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rpc_loop, comm, fleet.rpc_targets, stop, rpc)
        nursery.start_soon(broadcast_loop, comm, stop, broadcasts)
        try:
            yield rpc, broadcasts
        finally:
            stop.set()
            # An RPC or broadcast caught mid-call is abandoned, not counted.
            nursery.cancel_scope.cancel()


# -- figures ------------------------------------------------------------------------------------


@dataclass
class Figures:
    """What a scenario did; printed as one line, then asserted on."""

    scenario: str
    sent: int
    completed: int
    lost: int
    executed_twice: int
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        extras = " ".join(f"{key}={_fmt(value)}" for key, value in self.extra.items())
        return (f"FAULTS {self.scenario}: sent={self.sent} completed={self.completed} "
                f"lost={self.lost} executed_twice={self.executed_twice} {extras}").rstrip()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def executed_twice(completions: Counter[int]) -> int:
    """How many tasks the workers completed more than once."""
    return sum(1 for count in completions.values() if count > 1)


def report(figures: Figures, capsys: pytest.CaptureFixture[str]) -> None:
    """Print the figures line: into the test's output (shown with ``-s`` and on failure) and
    straight to the terminal (so that CI logs always show it)."""
    line = figures.line()
    print(line)
    with capsys.disabled():
        sys.stdout.write(f"\n{line}\n")
        sys.stdout.flush()
