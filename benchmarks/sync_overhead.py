"""How much the portal thread adds: blocking kiwitrio_sync calls vs the async core.

Measures, in one run against the same broker, with the same subscribers (plain functions):
  * RPC round trip latency (rpc_send + result), median and p99;
  * task round trip latency (task_send + result, one at a time), median and p99.
Prints the figures and the sync/async ratios (the target is <= 1.5x).

    python benchmarks/sync_overhead.py [--url URL] [--count N] [--repeat R]
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import trio

import kiwitrio
import kiwitrio_sync


def names() -> dict[str, Any]:
    prefix = f"kt-bench-{uuid.uuid4().hex[:8]}"
    return {"message_exchange": f"{prefix}.m", "task_exchange": f"{prefix}.t",
            "task_queue": f"{prefix}.q", "testing_mode": True}


def echo(_comm: Any, msg: Any) -> Any:
    return msg


def summary(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1e3, ordered[int(len(ordered) * 0.99) - 1] * 1e3


async def async_run(url: str, count: int) -> dict[str, list[float]]:
    async with kiwitrio.open_communicator(url, **names()) as comm:
        await comm.add_rpc_subscriber(echo, "bench")
        subscriber = await comm.add_task_subscriber(echo)
        rpc, task = [], []
        for i in range(count):
            start = time.perf_counter()
            await (await comm.rpc_send("bench", i))
            rpc.append(time.perf_counter() - start)
        for i in range(count):
            start = time.perf_counter()
            await (await comm.task_send(i))
            task.append(time.perf_counter() - start)
        await comm.remove_task_subscriber(subscriber)
        await kiwitrio_cleanup(comm)
    return {"rpc": rpc, "task": task}


async def kiwitrio_cleanup(comm: kiwitrio.Communicator) -> None:
    queue = comm._default_queue.name
    await comm._ctx.session.delete_queue(queue)
    await comm._ctx.session.delete_queue(f"{queue}.dead-letter")


def sync_run(url: str, count: int) -> dict[str, list[float]]:
    with kiwitrio_sync.connect(url, **names()) as comm:
        comm.add_rpc_subscriber(echo, "bench")
        subscriber = comm.add_task_subscriber(echo)
        rpc, task = [], []
        for i in range(count):
            start = time.perf_counter()
            comm.rpc_send("bench", i).result()
            rpc.append(time.perf_counter() - start)
        for i in range(count):
            start = time.perf_counter()
            comm.task_send(i).result()
            task.append(time.perf_counter() - start)
        comm.remove_task_subscriber(subscriber)
        comm._call(kiwitrio_cleanup, comm._core)
    return {"rpc": rpc, "task": task}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=kiwitrio.DEFAULT_URL)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, Callable[[], dict[str, list[float]]]] = {
        "async": lambda: trio.run(async_run, args.url, args.count),
        "sync": lambda: sync_run(args.url, args.count),
    }
    samples: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeat):  # interleaved, so that machine noise hits both alike
        for flavour, run in runs.items():
            for kind, values in run().items():
                samples.setdefault((flavour, kind), []).extend(values)
    print(f"{'':8}{'median ms':>12}{'p99 ms':>10}")
    medians = {}
    for (flavour, kind), values in samples.items():
        median, p99 = summary(values)
        medians[flavour, kind] = median
        print(f"{flavour + ' ' + kind:<14}{median:>6.3f}{p99:>10.3f}")
    for kind in ("rpc", "task"):
        ratio = medians["sync", kind] / medians["async", kind]
        print(f"sync/async {kind} round trip: {ratio:.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()
