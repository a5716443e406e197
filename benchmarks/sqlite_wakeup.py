"""Wake-up latency and idle CPU of a worker on ``sqlite://`` (issue 16).

    python benchmarks/sqlite_wakeup.py [--tasks 300] [--idle 10] [--poll 1.0] [--dir DIR]

A worker process subscribes to a task queue on a fresh database file and records, for each
task, when it received it (``time.time()``, which is system-wide). The client sends the tasks
one at a time, so that the worker is idle (asleep on its doorbell) when each arrives, and
reports the wake-up latency (task_send returned -> the worker's subscriber started: the ring,
the worker's look at the file, its claim and the decoding) and the round trip. Then both sit
idle for ``--idle`` seconds and the worker's CPU time over that span is read from /proc.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import kiwitrio

WORKER = """
import sys, time, trio, kiwitrio

async def main(url):
    async with kiwitrio.open_communicator(url) as comm:
        await comm.add_task_subscriber(lambda _comm, task: time.time())
        print("ready", flush=True)
        await trio.to_thread.run_sync(sys.stdin.read)  # until the client closes it

trio.run(main, sys.argv[1])
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def measure(args: argparse.Namespace, directory: str) -> dict[str, Any]:
    url = f"sqlite://{directory}/wakeup.db?poll={args.poll}"
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", WORKER, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert process.stdout is not None and process.stdin is not None
    try:
        with trio.fail_after(30):
            assert (await process.stdout.receive_some()).startswith(b"ready")
        wakeups: list[float] = []
        round_trips: list[float] = []
        async with kiwitrio.open_communicator(url) as comm:
            for number in range(args.tasks):
                began = time.time()
                handle = await comm.task_send(number)
                sent = time.time()
                received_at = await handle
                round_trips.append(time.time() - began)
                wakeups.append(received_at - sent)
                await trio.sleep(args.gap)  # the worker goes back to sleep on its doorbell
            await trio.sleep(1)  # let the last reply's settling finish
            before = cpu_seconds(process.pid)
            await trio.sleep(args.idle)
            idle_cpu = cpu_seconds(process.pid) - before
    finally:
        await process.stdin.aclose()
        with trio.move_on_after(10):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
    return {
        "tasks": args.tasks,
        "wakeup_median_ms": statistics.median(wakeups) * 1000,
        "wakeup_p99_ms": percentile(wakeups, 0.99) * 1000,
        "wakeup_max_ms": max(wakeups) * 1000,
        "round_trip_median_ms": statistics.median(round_trips) * 1000,
        "round_trip_p99_ms": percentile(round_trips, 0.99) * 1000,
        "idle_seconds": args.idle,
        "idle_cpu_percent": 100 * idle_cpu / args.idle,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--idle", type=float, default=10.0)
    parser.add_argument("--poll", type=float, default=1.0,
                        help="the sessions' safety-net poll interval (seconds)")
    parser.add_argument("--gap", type=float, default=0.01,
                        help="pause between tasks, so that each finds the worker asleep")
    parser.add_argument("--dir", help="where the database file goes (default: a temp dir)")
    args = parser.parse_args()
    if args.dir:
        figures = trio.run(measure, args, args.dir)
    else:
        with tempfile.TemporaryDirectory() as directory:
            figures = trio.run(measure, args, directory)
    print(" ".join(f"{key}={value:.2f}" if isinstance(value, float) else f"{key}={value}"
                   for key, value in figures.items()))


if __name__ == "__main__":
    main()
