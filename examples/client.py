"""A task client: sends tasks to the workers of ``worker.py`` and prints their results.

Start at least one worker, then::

    python examples/client.py                  # 10 tasks to the default task queue
    python examples/client.py -n 50 --delay 0.2
    python examples/client.py --queue my.tasks

Tasks are durable: sent while no worker runs, they wait in the queue until one starts (this
client waits ``--timeout`` seconds for all results).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import trio

import kiwitrio

DEFAULT_URL = os.environ.get("KIWITRIO_URL", kiwitrio.DEFAULT_URL)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL,
                        help="broker URL (default: $KIWITRIO_URL or %(default)s)")
    parser.add_argument("-n", "--count", type=int, default=10, help="tasks to send (default 10)")
    parser.add_argument("--delay", type=float, default=0.1,
                        help="seconds each task keeps a worker busy (default 0.1)")
    parser.add_argument("--queue", default=None,
                        help="task queue to send to (default: the communicator's default queue)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for all results (default 60)")
    return parser.parse_args()


async def main(args: argparse.Namespace) -> None:
    options: dict[str, Any] = {"task_queue": args.queue} if args.queue else {}
    async with kiwitrio.open_communicator(args.url, **options) as comm:
        start = time.monotonic()
        with trio.fail_after(args.timeout):
            # task_send returns once the broker has the task; the handles resolve later.
            handles = [await comm.task_send({"x": i, "delay": args.delay})
                       for i in range(args.count)]
            print(f"sent {len(handles)} tasks in {time.monotonic() - start:.2f}s")
            for i, handle in enumerate(handles):
                try:
                    result = await handle
                except kiwitrio.RemoteException as exc:
                    print(f"task {i}: the worker raised {exc}")
                else:
                    print(f"task {i}: {result['x']}^2 = {result['y']} "
                          f"(by {result['worker']}, pid {result['pid']})")
        print(f"all {len(handles)} results in {time.monotonic() - start:.2f}s")


if __name__ == "__main__":
    try:
        trio.run(main, parse_args())
    except kiwitrio.ConnectionFailed as exc:
        sys.exit(f"client: cannot reach the broker: {exc}")
    except trio.TooSlowError:
        sys.exit("client: timed out waiting for results (is a worker running on that queue?)")
