"""Benchmark client for kiwitrio's async API (one process runs every workload in turn).

    python benchmarks/client_kiwitrio.py --config JSON

Started by ``benchmarks/run.py``, which reads the ``RESULT {...}`` line it prints last. The
workers are ``worker_kiwitrio.py`` processes.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import trio

import kiwitrio
from benchmarks._common import (
    DEFAULT_SIZE,
    PREFETCH,
    RPC_CONCURRENCY,
    SENDER,
    SUBJECT,
    WINDOW,
    WORKER_PROCESSES,
    Helpers,
    MemoryProbe,
    broadcast_timeout,
    clean_up,
    client_parser,
    cpu_cost,
    emit_result,
    helpers,
    inflight_metrics,
    kiwi_names,
    latency_summary,
    payload,
    run_workloads,
    size_label,
    spawn_listeners,
    worker_argv,
)

IMPL = "kiwitrio"
WORKER = "worker_kiwitrio.py"
RPC_ID = "bench-echo"


def options(prefix: str, **extra: Any) -> dict[str, Any]:
    return {**kiwi_names(prefix), "testing_mode": True, **extra}


async def lanes(count: int, op: Callable[[], Awaitable[Any]], concurrency: int = WINDOW,
                ) -> float:
    """Run ``op`` ``count`` times from ``concurrency`` tasks; returns the elapsed seconds."""
    remaining = iter(range(count))

    async def lane() -> None:
        for _ in remaining:
            await op()

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(min(concurrency, count)):
            nursery.start_soon(lane)
    return time.perf_counter() - start


def counting_subscriber(total: int) -> tuple[Callable[[Any, Any], Awaitable[None]],
                                             trio.Event]:
    """A task subscriber that only counts, and the event it sets at the ``total``-th task."""
    seen = 0
    all_seen = trio.Event()

    async def consume(_comm: Any, _task: Any) -> None:
        nonlocal seen
        seen += 1
        if seen == total:
            all_seen.set()

    return consume, all_seen


def spawn_workers(group: Helpers, url: str, prefix: str, api: str, rpc: bool) -> None:
    for index in range(WORKER_PROCESSES):
        extra = ["--api", api] + (["--rpc", RPC_ID] if rpc and index == 0 else [])
        group.spawn(worker_argv(WORKER, "tasks", url, prefix, *extra))


class Client:
    def __init__(self, config: dict[str, Any]) -> None:
        config.setdefault("impl", IMPL)
        self.config = config
        self.url: str = config["url"]
        self.prefix: str = config["prefix"]
        self.warmup: int = config["warmup"]
        self.server_version = ""
        self.leftovers: list[str] = []

    # -- tasks and RPC: worker processes answer -------------------------------------------

    async def tasks_and_rpc(self) -> dict[str, Any]:
        prefix = f"{self.prefix}-tasks"
        selected = self.config["workloads"]
        out: dict[str, Any] = {}
        with helpers() as group:
            spawn_workers(group, self.url, prefix, "async", rpc="rpc" in selected)
            async with kiwitrio.open_communicator(self.url, **options(prefix)) as comm:
                self.server_version = str(comm.server_properties.get("version", ""))
                await trio.to_thread.run_sync(group.wait_for, "ready")
                if "tasks" in selected:
                    for size in self.config["task_sizes"]:
                        out.update(await self.task_rate(comm, size))
                if "rpc" in selected:
                    out.update(await self.rpc(comm))
            group.stop()
        self.clean(prefix)
        return out

    async def task_rate(self, comm: kiwitrio.Communicator, size: int) -> dict[str, float]:
        count = self.config["task_counts"][str(size)]
        body = payload(size)

        async def round_trip() -> None:
            await (await comm.task_send(body))

        await lanes(self.warmup, round_trip)
        out: dict[str, float] = {}
        with cpu_cost(out, f"task_cpu_{size_label(size)}", count):
            out[f"task_rate_{size_label(size)}"] = count / await lanes(count, round_trip)
        return out

    async def rpc(self, comm: kiwitrio.Communicator) -> dict[str, Any]:
        body = payload(DEFAULT_SIZE)

        async def call() -> None:
            await (await comm.rpc_send(RPC_ID, body))

        await lanes(self.warmup, call, 1)
        samples = []
        for _ in range(self.config["rpc_latency_count"]):
            start = time.perf_counter()
            await call()
            samples.append(time.perf_counter() - start)
        summary = latency_summary(samples)
        count = self.config["rpc_concurrent_count"]
        elapsed = await lanes(count, call, RPC_CONCURRENCY)
        return {"rpc_median_ms": summary["median_ms"], "rpc_p99_ms": summary["p99_ms"],
                "rpc_concurrent_rate": count / elapsed}

    # -- confirmed publish, then consume + ack of what was published ---------------------

    async def publish_consume(self) -> dict[str, Any]:
        prefix = f"{self.prefix}-pub"
        count = self.config["publish_count"]
        body = payload(DEFAULT_SIZE)
        out: dict[str, Any] = {}
        async with kiwitrio.open_communicator(
                self.url, **options(prefix, task_prefetch_count=PREFETCH)) as comm:

            async def publish() -> None:
                await comm.task_send(body, no_reply=True)

            await lanes(self.warmup, publish)
            with cpu_cost(out, "publish_cpu", count):
                out["publish_rate"] = count / await lanes(count, publish)
            if "consume" in self.config["workloads"]:
                total = count + self.warmup
                consume, all_seen = counting_subscriber(total)
                with cpu_cost(out, "consume_cpu", total):
                    start = time.perf_counter()
                    subscriber = await comm.add_task_subscriber(consume)
                    with trio.fail_after(120):
                        await all_seen.wait()
                    out["consume_rate"] = total / (time.perf_counter() - start)
                await comm.remove_task_subscriber(subscriber)
        self.clean(prefix)
        return out

    # -- broadcasts ------------------------------------------------------------------------

    async def broadcasts(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for listeners, count in self.config["broadcast"]:
            prefix = f"{self.prefix}-bc{listeners}"
            out[f"broadcast_rate_{listeners}"] = await self.broadcast(prefix, listeners, count)
            self.clean(prefix)
        return out

    async def broadcast(self, prefix: str, listeners: int, count: int) -> float:
        body = payload(DEFAULT_SIZE)
        with helpers() as group:
            spawn_listeners(group, WORKER, self.url, prefix, listeners, count, ["--api", "async"])
            async with kiwitrio.open_communicator(self.url, **options(prefix)) as comm:
                await trio.to_thread.run_sync(group.wait_for, "ready")
                for _ in range(self.warmup):  # filtered out (not bound, in fact)
                    await comm.broadcast_send(body, sender=SENDER, subject="warmup.x")
                start = time.monotonic()
                await lanes(count, lambda: comm.broadcast_send(body, sender=SENDER,
                                                               subject=SUBJECT))
                done = await trio.to_thread.run_sync(functools.partial(
                    group.wait_for, "done", timeout=broadcast_timeout(listeners, count)))
            group.stop()
        return listeners * count / (max(float(line.split()[1]) for line in done) - start)

    # -- 10,000 tasks in flight ------------------------------------------------------------

    async def inflight(self) -> dict[str, Any]:
        prefix = f"{self.prefix}-inflight"
        count = self.config["inflight_count"]
        body = payload(DEFAULT_SIZE)
        async with kiwitrio.open_communicator(self.url, **options(prefix)) as comm:
            await comm.task_send(body, no_reply=True)  # opens the publishing channel
            probe = MemoryProbe()
            handles: list[kiwitrio.ResultHandle] = []

            async def send() -> None:
                handles.append(await comm.task_send(body))

            send_s = await lanes(count, send)
            held = probe.now()
            with helpers() as group:
                start = time.perf_counter()
                spawn_workers(group, self.url, prefix, "async", rpc=False)
                with trio.fail_after(600):
                    for handle in handles:
                        await handle
                drain_s = time.perf_counter() - start
                group.stop()
            handles.clear()
            after = probe.now()
            probe.stop()
        self.clean(prefix)
        return inflight_metrics(count, held, after, send_s, drain_s)

    def clean(self, prefix: str) -> None:
        """Delete what ``prefix`` left (at the end, with aio-pika in plain asyncio)."""
        self.leftovers.append(prefix)


def main() -> None:
    args = client_parser(__doc__.splitlines()[0]).parse_args()
    config = json.loads(args.config)
    client = Client(config)
    groups = [
        ("tasks+rpc", ["tasks", "rpc"], lambda: trio.run(client.tasks_and_rpc)),
        ("publish+consume", ["publish", "consume"], lambda: trio.run(client.publish_consume)),
        ("broadcast", ["broadcast"], lambda: trio.run(client.broadcasts)),
        ("inflight", ["inflight"], lambda: trio.run(client.inflight)),
    ]
    try:
        metrics, errors = run_workloads(config, groups)
    finally:
        clean_up(config["url"], client.leftovers)
    emit_result(config["impl"], metrics, errors, {
        "python": platform.python_version(), "kiwitrio": kiwitrio.__version__,
        "kiwitrio_from": os.path.dirname(os.path.dirname(kiwitrio.__file__)),
        "rabbitmq": client.server_version,
    })


if __name__ == "__main__":
    main()
