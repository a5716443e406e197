"""Shared pieces of the benchmark clients and workers. Standard library only.

This module is imported by the kiwiPy client and worker too, which run in a virtual
environment of their own (kiwiPy 0.9 needs aio-pika 9.5, kiwitrio aio-pika 10): nothing here
may import kiwitrio, aio-pika or kiwiPy.

Protocol between a client and its helper processes (workers, broadcast listeners): a helper
prints ``ready`` once it is subscribed, a listener prints ``done <monotonic time>`` once each
of its listeners has received what it expects, and every helper stops when it reads a line
(or end of file) on its standard input, printing ``count <n>`` (what it received) last.
``time.monotonic()`` is system-wide on Linux, so times from different processes compare.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import queue
import subprocess
import sys
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any

# Re-exported: the clients import them from here.
from benchmarks._cpu import cpu_cost as cpu_cost
from benchmarks._cpu import latency_summary as latency_summary
from benchmarks._cpu import percentile as percentile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
NAME_PREFIX = "kt-bench-"

#: Worker processes that process tasks (and answer RPCs) in the task workloads.
WORKER_PROCESSES = 2
#: Unacknowledged deliveries per consumer (task workers and the consume+ack workload).
PREFETCH = 64
#: Round trips / publishes in flight for async clients (one coroutine each).
WINDOW = 200
#: Sending threads for the blocking clients (kiwitrio_sync, kiwiPy); they share WINDOW.
THREADS = 8
#: Concurrent callers in the concurrent-RPC workload (coroutines or threads alike).
RPC_CONCURRENCY = 16
#: Broadcast listeners per listener process (each its own connection/communicator).
LISTENERS_PER_PROCESS = 5
#: The broadcast subject and sender, and the filters every listener applies.
SUBJECT = "bench.state_changed.running.finished"
SUBJECT_FILTER = "bench.*"
SENDER = "bench-sender"
SENDER_FILTER = "bench-*"
#: Bodies are this big unless a workload says otherwise.
DEFAULT_SIZE = 1024

RESULT_MARK = "RESULT "


def new_prefix(tag: str = "") -> str:
    """A unique name prefix (every queue and exchange a run makes starts with it)."""
    return f"{NAME_PREFIX}{uuid.uuid4().hex[:8]}{('-' + tag) if tag else ''}"


def payload(size: int) -> str:
    """A text body of ``size`` ASCII characters (no spaces: YAML does not fold it)."""
    unit = "kiwitrio-benchmark-"
    return (unit * (size // len(unit) + 1))[:size]


def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


# -- memory -----------------------------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class MemoryProbe:
    """tracemalloc (Python allocations) and RSS, relative to a baseline."""

    def __init__(self) -> None:
        import gc

        self._gc = gc
        gc.collect()
        tracemalloc.start()
        self.base_traced = tracemalloc.get_traced_memory()[0]
        self.base_rss = rss_bytes()

    def now(self) -> dict[str, int]:
        self._gc.collect()
        traced, peak = tracemalloc.get_traced_memory()
        return {"traced": traced - self.base_traced, "peak": peak - self.base_traced,
                "rss": rss_bytes() - self.base_rss}

    def stop(self) -> None:
        tracemalloc.stop()


def inflight_metrics(count: int, held: dict[str, int], after: dict[str, int],
                     send_s: float, drain_s: float) -> dict[str, float]:
    return {
        "inflight_count": count,
        "inflight_traced_bytes_per_task": held["traced"] / count,
        "inflight_rss_bytes_per_task": held["rss"] / count,
        "inflight_traced_mib": held["traced"] / 2**20,
        "inflight_rss_mib": held["rss"] / 2**20,
        "inflight_retained_fraction": (after["traced"] / held["traced"]) if held["traced"] else 0.0,
        "inflight_send_rate": count / send_s,
        "inflight_drain_rate": count / drain_s,
    }


# -- helper processes -------------------------------------------------------------------------


class Helpers:
    """Worker/listener processes of one workload, with their output lines in a queue."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[str]] = []
        self._lines: queue.Queue[tuple[int, str]] = queue.Queue()

    def spawn(self, argv: Sequence[str]) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True, cwd=ROOT, env=env)
        index = len(self._procs)
        self._procs.append(proc)
        threading.Thread(target=self._read, args=(index, proc), daemon=True).start()

    def _read(self, index: int, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self._lines.put((index, line.strip()))
        self._lines.put((index, "<eof>"))

    def wait_for(self, word: str, count: int | None = None, timeout: float = 60.0,
                 ) -> list[str]:
        """Wait for ``count`` (default: one per process) lines starting with ``word``."""
        count = len(self._procs) if count is None else count
        found: list[str] = []
        deadline = time.monotonic() + timeout
        eofs = 0
        while len(found) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"waited {timeout:.0f} s for {count} {word!r} lines, "
                                   f"got {len(found)}")
            try:
                _index, line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line.startswith(word):
                found.append(line)
            elif line == "<eof>":
                eofs += 1
                if eofs >= len(self._procs):
                    raise RuntimeError(f"helpers exited while waiting for {word!r}")
        return found

    def stop(self, timeout: float = 20.0) -> list[int]:
        """Ask every helper to stop; returns the counts they report."""
        for proc in self._procs:
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.write("stop\n")
                proc.stdin.close()
        deadline = time.monotonic() + timeout
        for proc in self._procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        counts = []
        while True:
            try:
                _index, line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line.startswith("count "):
                counts.append(int(line.split()[1]))
        self._procs.clear()
        return counts

    def kill(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self._procs.clear()


@contextlib.contextmanager
def helpers() -> Iterator[Helpers]:
    group = Helpers()
    try:
        yield group
    finally:
        group.kill()


def worker_argv(script: str, role: str, url: str, prefix: str, *extra: str,
                python: str | None = None) -> list[str]:
    return [python or sys.executable, os.path.join(HERE, script), role, "--url", url,
            "--prefix", prefix, *extra]


def wait_for_stop_line() -> None:
    """Block until the controlling client writes a line (or closes our stdin)."""
    sys.stdin.readline()


def announce(word: str, *values: Any) -> None:
    print(" ".join([word, *map(str, values)]), flush=True)


class ListenerCounts:
    """Counts deliveries per listener; announces ``done`` once every one has ``expect``."""

    def __init__(self, listeners: int, expect: int) -> None:
        self.counts = [0] * listeners
        self._expect = expect
        self._complete = 0
        self._lock = threading.Lock()

    def hit(self, index: int) -> None:
        with self._lock:
            self.counts[index] += 1
            if self.counts[index] == self._expect:
                self._complete += 1
                if self._complete == len(self.counts):
                    announce("done", repr(time.monotonic()))

    def total(self) -> int:
        return sum(self.counts)


def worker_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("role", choices=["tasks", "listen"])
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--rpc", default=None, help="also answer RPCs under this identifier")
    parser.add_argument("--prefetch", type=int, default=PREFETCH)
    parser.add_argument("--listeners", type=int, default=1)
    parser.add_argument("--expect", type=int, default=0)
    return parser


# -- blocking-API drivers (kiwitrio_sync and kiwiPy share them) --------------------------------


def threaded_sends(send: Callable[[], Future[Any] | Any], count: int, *, threads: int = THREADS,
                   window: int = WINDOW, wait_results: bool = True,
                   timeout: float = 600.0) -> tuple[float, list[Future[Any]]]:
    """``count`` calls of ``send()`` from ``threads`` threads, at most ``window`` unfinished.

    ``send`` blocks until the broker has the message and returns a future of the result
    (or anything, if ``wait_results`` is false). Returns the seconds until every result
    arrived (or every send returned) and the futures.
    """
    issued = 0
    finished = 0
    lock = threading.Lock()
    slots = threading.BoundedSemaphore(window)
    all_done = threading.Event()
    errors: list[BaseException] = []
    futures: list[Future[Any]] = []

    def one_done(future: Future[Any] | None) -> None:
        nonlocal finished
        if future is not None and future.exception() is not None:
            errors.append(future.exception())  # type: ignore[arg-type]
            all_done.set()
        slots.release()
        with lock:
            finished += 1
            if finished == count:
                all_done.set()

    def sender() -> None:
        nonlocal issued
        while True:
            with lock:
                if issued >= count or errors:
                    return
                issued += 1
            slots.acquire()
            try:
                result = send()
            except BaseException as exc:
                errors.append(exc)
                slots.release()
                all_done.set()
                return
            if wait_results and isinstance(result, Future):
                futures.append(result)
                result.add_done_callback(one_done)
            else:
                if isinstance(result, Future):
                    futures.append(result)
                one_done(None)

    start = time.perf_counter()
    pool = [threading.Thread(target=sender, daemon=True) for _ in range(threads)]
    for thread in pool:
        thread.start()
    if not all_done.wait(timeout):
        raise TimeoutError(f"{finished} of {count} done after {timeout} s")
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    for thread in pool:
        thread.join()
    return elapsed, futures


def threaded_calls(call: Callable[[], Any], count: int, concurrency: int) -> float:
    """``count`` blocking calls from ``concurrency`` threads; returns the elapsed seconds."""
    remaining = iter(range(count))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def caller() -> None:
        while not errors:
            with lock:
                if next(remaining, None) is None:
                    return
            try:
                call()
            except BaseException as exc:
                errors.append(exc)

    start = time.perf_counter()
    pool = [threading.Thread(target=caller, daemon=True) for _ in range(concurrency)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - start


def timed_calls(call: Callable[[], Any], count: int) -> list[float]:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples


# -- the client side --------------------------------------------------------------------------


def client_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True,
                        help="JSON: url, prefix, workloads, counts (see run.py)")
    return parser


def emit_result(impl: str, metrics: dict[str, Any], errors: dict[str, str],
                meta: dict[str, Any]) -> None:
    print(RESULT_MARK + json.dumps({"impl": impl, "metrics": metrics, "errors": errors,
                                    "meta": meta}), flush=True)


def run_workloads(config: dict[str, Any],
                  groups: Sequence[tuple[str, Sequence[str], Callable[[], dict[str, Any]]]],
                  ) -> tuple[dict[str, Any], dict[str, str]]:
    """Run each group of workloads (name, workloads it measures, function) that measures a
    selected workload, in order; a failing group is reported and the others still run."""
    metrics: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name, measures, run in groups:
        if not set(measures) & set(config["workloads"]):
            continue
        started = time.monotonic()
        try:
            metrics.update(run())
        except Exception as exc:
            errors[name] = f"{type(exc).__name__}: {exc}"
            log(f"  {config.get('impl', '')} {name} failed: {errors[name]}")
        else:
            log(f"  {config.get('impl', '')} {name}: {time.monotonic() - started:.1f} s")
    return metrics, errors


# -- names and clean-up -----------------------------------------------------------------------


def kiwi_names(prefix: str) -> dict[str, str]:
    """Exchange and queue names for kiwitrio and kiwiPy communicators of one run."""
    return {"message_exchange": f"{prefix}.m", "task_exchange": f"{prefix}.t",
            "task_queue": f"{prefix}.q"}


def kiwi_leftovers(prefix: str) -> tuple[list[str], list[str]]:
    """(queues, exchanges) a kiwitrio or kiwiPy run leaves, durable ones included."""
    names = kiwi_names(prefix)
    queues = [names["task_queue"], f"{names['task_queue']}.dead-letter"]
    exchanges = [names["message_exchange"], names["task_exchange"],
                 f"{names['task_exchange']}.dead-letter"]
    return queues, exchanges


def delete_names(url: str, queues: Sequence[str], exchanges: Sequence[str]) -> None:
    """Delete queues and exchanges (missing ones are fine), with aio-pika in plain asyncio.

    Works with aio-pika 9.5 and 10, so in the kiwiPy environment too. Call it outside any
    running event loop. Nothing to do for a ``sqlite://`` run: its file is the run's own.
    """
    if url.startswith("sqlite:"):
        return
    import asyncio

    import aio_pika

    async def delete() -> None:
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            for kind, names in (("queue", queues), ("exchange", exchanges)):
                for name in names:
                    if not name.startswith(NAME_PREFIX):
                        raise ValueError(f"refusing to delete {name!r}: not a benchmark name")
                    if channel.is_closed:
                        channel = await connection.channel()
                    try:
                        if kind == "queue":
                            await channel.queue_delete(name)
                        else:
                            await channel.exchange_delete(name)
                    except Exception as exc:
                        log(f"could not delete {kind} {name}: {exc}")

    asyncio.run(delete())


# -- shared by the clients --------------------------------------------------------------------


def size_label(size: int) -> str:
    return f"{size // 1024}KiB" if size % 1024 == 0 else f"{size}B"


def spawn_listeners(group: Helpers, script: str, url: str, prefix: str, listeners: int,
                    count: int, extra: list[str], python: str | None = None) -> None:
    processes = math.ceil(listeners / LISTENERS_PER_PROCESS)
    for index in range(processes):
        here = min(LISTENERS_PER_PROCESS, listeners - index * LISTENERS_PER_PROCESS)
        group.spawn(worker_argv(script, "listen", url, prefix, "--listeners", str(here),
                                "--expect", str(count), *extra, python=python))


def broadcast_timeout(listeners: int, count: int) -> float:
    return 60.0 + listeners * count / 50.0


def clean_up(url: str, prefixes: list[str]) -> None:
    queues: list[str] = []
    exchanges: list[str] = []
    for prefix in prefixes:
        more_queues, more_exchanges = kiwi_leftovers(prefix)
        queues += more_queues
        exchanges += more_exchanges
    delete_names(url, queues, exchanges)
