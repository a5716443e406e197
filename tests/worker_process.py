"""A task worker in its own process, for tests/test_worker_processes.py.

Run as ``python -m tests.worker_process ...`` or ``python tests/worker_process.py ...``.

The worker opens a communicator on the given exchange and queue names (in testing mode),
subscribes to the task queue and prints ``ready`` on stdout. For a task ``{"id": n}`` it
returns ``{"id": n, "square": n * n, "pid": <its pid>}`` and appends ``done <n>`` to its log
file. For a task marked ``"slow": True`` it first appends ``started <n>``; with
``--block-slow`` it then blocks until cancelled (so the task is never finished by it).

Every log line is written with one ``write`` and fsync'ed before the subscriber returns, so
the log is a durable record of what the worker did. On SIGTERM or SIGINT (or, with
``--exit-on-stdin-eof``, when its stdin closes because the parent died) it appends
``stopped <reason>``, leaves the communicator block (giving unfinished tasks back to the
queue) and exits with status 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

import trio

import kiwitrio


class TaskLog:
    """Appends lines to a file, each with a single write and an fsync."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def append(self, line: str) -> None:
        os.write(self._fd, f"{line}\n".encode())
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


class Worker:
    def __init__(self, log: TaskLog, *, block_slow: bool) -> None:
        self._log = log
        self._block_slow = block_slow

    async def on_task(self, _comm: kiwitrio.Communicator, task: Any) -> dict[str, int]:
        task_id = int(task["id"])
        if task.get("slow"):
            self._log.append(f"started {task_id}")
            if self._block_slow:
                await trio.sleep_forever()
        result = {"id": task_id, "square": task_id * task_id, "pid": os.getpid()}
        self._log.append(f"done {task_id}")
        return result


async def _stop_on_signal(
    signals: AsyncIterator[int], log: TaskLog, scope: trio.CancelScope
) -> None:
    async for signum in signals:
        log.append(f"stopped {signal.Signals(signum).name}")
        scope.cancel()
        return


async def _stop_on_stdin_eof(log: TaskLog, scope: trio.CancelScope) -> None:
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with stdin:
        while await stdin.receive_some():
            pass
    log.append("stopped stdin-eof")
    scope.cancel()


async def run_worker(args: argparse.Namespace, log: TaskLog) -> None:
    worker = Worker(log, block_slow=args.block_slow)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with kiwitrio.open_communicator(
            args.url,
            message_exchange=args.message_exchange,
            task_exchange=args.task_exchange,
            task_queue=args.task_queue,
            task_prefetch_count=args.prefetch,
            testing_mode=True,
        ) as comm:
            await comm.add_task_subscriber(worker.on_task)
            print("ready", flush=True)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_stop_on_signal, signals, log, nursery.cancel_scope)
                if args.exit_on_stdin_eof:
                    nursery.start_soon(_stop_on_stdin_eof, log, nursery.cancel_scope)
        # Leaving the communicator block gave back the tasks still being worked on.


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", required=True, help="broker URL (amqp://...)")
    parser.add_argument("--message-exchange", required=True)
    parser.add_argument("--task-exchange", required=True)
    parser.add_argument("--task-queue", required=True)
    parser.add_argument("--prefetch", type=int, default=1, help="task_prefetch_count")
    parser.add_argument("--log", required=True, help="file to append task events to")
    parser.add_argument("--block-slow", action="store_true",
                        help='block forever on tasks marked "slow" (after logging "started")')
    parser.add_argument("--exit-on-stdin-eof", action="store_true",
                        help="exit cleanly when stdin closes (the parent went away)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format=f"[worker {os.getpid()}] %(levelname)s %(name)s: %(message)s")
    log = TaskLog(args.log)
    try:
        trio.run(run_worker, args, log)
    finally:
        log.close()


if __name__ == "__main__":
    main()
