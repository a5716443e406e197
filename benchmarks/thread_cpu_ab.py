# ruff: noqa: RUF001 - the report prints multiplication signs on purpose
"""CPU per message of the Trio thread and of the whole process, two kiwitrio trees alternated.

    python benchmarks/thread_cpu_ab.py A_DIR B_DIR [--what consume|publish] [--count 20000]
                                       [--repeat 8]

A narrower A/B than ``ab.py``, for changes whose effect is smaller than the noise of a loaded
machine on rates: one process per run (no worker processes), one workload, and CPU time read
per thread (``time.thread_time`` in the Trio thread) as well as for the process. ``consume``:
consume + ack of a queue prefilled with ``--count`` persistent 1 KiB tasks (prefetch 64, an
async subscriber); ``publish``: ``--count`` confirmed persistent publishes, 200 in flight.
Runs alternate A, B, B, A, ...; prints medians and the median of the per-pair B/A ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import trio

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import DEFAULT_URL, PREFETCH
from benchmarks.client_kiwitrio import counting_subscriber, lanes


async def _one_run(what: str, count: int, prefix: str) -> dict[str, float]:
    import kiwitrio

    names: dict[str, Any] = {"message_exchange": f"{prefix}.m", "task_exchange": f"{prefix}.t",
                             "task_queue": f"{prefix}.q"}
    body = "x" * 1024
    async with kiwitrio.open_communicator(DEFAULT_URL, testing_mode=True,
                                          task_prefetch_count=PREFETCH, **names) as comm:
        async def publish() -> None:
            await comm.task_send(body, no_reply=True)

        await lanes(200, publish)  # warm-up; consumed below
        total = count + 200
        if what == "publish":
            thread0, process0, wall0 = time.thread_time(), time.process_time(), time.perf_counter()
            await lanes(count, publish)
        else:
            await lanes(count, publish)
            consume, done = counting_subscriber(total)
            thread0, process0, wall0 = time.thread_time(), time.process_time(), time.perf_counter()
            await comm.add_task_subscriber(consume)
            with trio.fail_after(300):
                await done.wait()
            count = total
        wall = time.perf_counter() - wall0
        thread = time.thread_time() - thread0
        process = time.process_time() - process0
    return {"rate": count / wall, "trio_thread_us": thread / count * 1e6,
            "process_us": process / count * 1e6}


def _child(what: str, count: int, prefix: str) -> None:
    result = trio.run(_one_run, what, count, prefix)
    print(json.dumps(result))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", nargs="?")
    parser.add_argument("b", nargs="?")
    parser.add_argument("--what", choices=["consume", "publish"], default="consume")
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=8)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.what, args.count, args.child)
        return 0
    figures: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    stamp = int(time.time())
    for rep in range(args.repeat):
        for side in ("A", "B") if rep % 2 == 0 else ("B", "A"):
            env = dict(os.environ, PYTHONPATH=os.path.abspath(args.a if side == "A" else args.b))
            out = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--what", args.what, "--count",
                 str(args.count), "--child", f"kt-tcpu-{stamp}-{rep}{side}"],
                env=env, capture_output=True, text=True, timeout=600, check=True)
            figures[side].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"| {args.what} | A | B | B/A (median of pairs) |")
    print("|---|---:|---:|---:|")
    for key in ("rate", "trio_thread_us", "process_us"):
        pairs = [(a[key], b[key]) for a, b in zip(figures["A"], figures["B"], strict=True)]
        ratio = statistics.median(b / a for a, b in pairs)
        print(f"| {key} | {statistics.median(a for a, _ in pairs):,.1f} | "
              f"{statistics.median(b for _, b in pairs):,.1f} | {ratio:.2f}× |")
        print(f"{key}: " + " ".join(f"{a:,.0f}/{b:,.0f}" for a, b in pairs), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
