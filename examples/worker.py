"""A task worker: takes tasks from a task queue and answers with their results.

Run it (as many as you like, in several terminals) and send it work with ``client.py``::

    python examples/worker.py                      # the default task queue
    python examples/worker.py --concurrency 4      # up to 4 tasks at once
    python examples/worker.py --queue my.tasks     # another task queue

A task is a dict ``{"x": <number>, "delay": <seconds>}``; the worker sleeps ``delay`` seconds
(as if working) and answers ``{"x": x, "y": x * x, "pid": <its pid>}``. A task whose ``x`` is
not a number makes the subscriber raise, and the sender gets a ``kiwitrio.RemoteException``.

It runs until SIGINT (Ctrl-C) or SIGTERM; tasks still in progress then go back to the queue
for another worker. Once subscribed it prints a line starting with ``worker ready``.
``--rpc-id NAME`` also answers RPC calls to NAME with the worker's status.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

import trio

import kiwitrio

DEFAULT_URL = os.environ.get("KIWITRIO_URL", kiwitrio.DEFAULT_URL)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL,
                        help="broker URL (default: $KIWITRIO_URL or %(default)s)")
    parser.add_argument("--queue", default=None,
                        help="task queue to work on (default: the communicator's default queue)")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="tasks worked on at once (the task prefetch count; default 1)")
    parser.add_argument("--rpc-id", default=None,
                        help="also answer RPC calls to this identifier with the worker's status")
    parser.add_argument("--name", default=None, help="name shown in output (default: worker-PID)")
    parser.add_argument("--quiet", action="store_true", help="do not print a line per task")
    # Used by demo.py: a private set of exchanges and testing mode, so that nothing is left
    # behind on the broker.
    parser.add_argument("--task-exchange", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--message-exchange", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--testing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    return args


def communicator_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {"task_prefetch_count": args.concurrency,
                               "testing_mode": args.testing}
    if args.queue:
        options["task_queue"] = args.queue
    if args.task_exchange:
        options["task_exchange"] = args.task_exchange
    if args.message_exchange:
        options["message_exchange"] = args.message_exchange
    return options


async def main(args: argparse.Namespace) -> None:
    name = args.name or f"worker-{os.getpid()}"
    done = 0

    async def square(comm: kiwitrio.Communicator, task: Any) -> dict[str, Any]:
        nonlocal done
        x = task["x"]
        if not isinstance(x, (int, float)):
            raise TypeError(f"x must be a number, not {type(x).__name__}")
        await trio.sleep(float(task.get("delay", 0)))
        done += 1
        if not args.quiet:
            print(f"{name}: {x} -> {x * x}", flush=True)
        return {"x": x, "y": x * x, "pid": os.getpid(), "worker": name}

    async def status(comm: kiwitrio.Communicator, msg: Any) -> dict[str, Any]:
        return {"worker": name, "pid": os.getpid(), "tasks_done": done, "asked": msg}

    # Receive the signals before connecting, so that an early Ctrl-C is not lost.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with kiwitrio.open_communicator(args.url, **communicator_options(args)) as comm:
            await comm.add_task_subscriber(square)
            if args.rpc_id:
                await comm.add_rpc_subscriber(status, args.rpc_id)
            queue = args.queue or "the default task queue"
            print(f"worker ready: {name} pid={os.getpid()} queue={queue} "
                  f"concurrency={args.concurrency}", flush=True)
            async for signum in signals:
                print(f"{name}: got {signal.Signals(signum).name}, stopping after "
                      f"{done} tasks", flush=True)
                break
    print(f"{name}: stopped", flush=True)


if __name__ == "__main__":
    try:
        trio.run(main, parse_args())
    except kiwitrio.ConnectionFailed as exc:
        sys.exit(f"worker: cannot reach the broker: {exc}")
