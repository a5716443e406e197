"""A task worker in its own process, for tests/test_worker_processes.py.

Run as ``python -m tests.worker_process ...`` or ``python tests/worker_process.py ...``.

The worker opens a communicator on the given exchange and queue names (in testing mode),
subscribes to the task queue and prints ``ready`` on stdout. For a task ``{"id": n}`` it
returns ``{"id": n, "square": n * n, "pid": <its pid>}`` and appends ``done <n>`` to its log
file. For a task marked ``"crash": True`` it appends ``started <n>`` and SIGKILLs itself.
For a task marked ``"slow": True`` it first appends ``started <n>``; with
``--block-slow`` it then blocks until cancelled (so the task is never finished by it).

Every log line is written with one ``write`` and fsync'ed before the subscriber returns, so
the log is a durable record of what the worker did. On SIGTERM or SIGINT (or, with
``--exit-on-stdin-eof``, when its stdin closes because the parent died) it appends
``stopped <reason>``, leaves the communicator block (giving unfinished tasks back to the
queue) and exits with status 0.

Optional extras (used by the fault-injection suite, tests/faults/; off by default):

- a task may carry ``"sleep": seconds`` of simulated work (``trio.sleep``, or ``time.sleep``
  in a thread with ``--sync``, which subscribes a plain function instead of an async one);
- ``--log-starts`` appends ``started <n>`` before every task, not only slow ones;
- ``--log-states`` appends ``state <value>`` for every connection state change;
- ``--rpc-id ID`` answers RPCs to ``ID`` with ``{"echo": msg, "pid": <its pid>}``;
- ``--broadcasts`` appends ``broadcast <seq>`` for broadcasts ``{"seq": n}`` on subject
  ``faults.*``;
- ``--heartbeat`` and ``--reconnect-delay``/``--reconnect-max-delay``/
  ``--startup-give-up-after`` set the communicator's heartbeat and reconnection policy;
- ``--url`` given again adds a node of a cluster;
- ``--hold-until-released``: a task marked ``"hold": True`` waits, after its ``started``
  line, until the line ``release`` arrives on stdin (from then on no task waits). The test
  thereby decides when the workers may finish such tasks: until then they hold them
  unacknowledged and take no more than their prefetch count from the queue.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
import threading
import time
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
    def __init__(self, log: TaskLog, *, block_slow: bool, log_starts: bool = False) -> None:
        self._log = log
        self._block_slow = block_slow
        self._log_starts = log_starts
        #: Set by a ``release`` line on stdin (``--hold-until-released``); the second one
        #: for the plain function, which waits in its thread.
        self.released = trio.Event()
        self.released_sync = threading.Event()

    async def on_task(self, _comm: kiwitrio.Communicator, task: Any) -> dict[str, int]:
        task_id = int(task["id"])
        if task.get("slow") or self._log_starts or task.get("crash"):
            self._log.append(f"started {task_id}")
        if task.get("crash"):
            os.kill(os.getpid(), signal.SIGKILL)  # a task that kills its worker
        if task.get("slow") and self._block_slow:
            await trio.sleep_forever()
        if task.get("hold"):
            await self.released.wait()
        if task.get("sleep"):
            await trio.sleep(float(task["sleep"]))
        return self._done(task_id)

    def on_task_sync(self, _comm: kiwitrio.Communicator, task: Any) -> dict[str, int]:
        """The same as :meth:`on_task`, as a plain function (kiwitrio runs it in a thread)."""
        task_id = int(task["id"])
        if task.get("slow") or self._log_starts:
            self._log.append(f"started {task_id}")
        if task.get("hold"):
            self.released_sync.wait()
        if task.get("sleep"):
            time.sleep(float(task["sleep"]))
        return self._done(task_id)

    def _done(self, task_id: int) -> dict[str, int]:
        result = {"id": task_id, "square": task_id * task_id, "pid": os.getpid()}
        self._log.append(f"done {task_id}")
        return result

    async def on_rpc(self, _comm: kiwitrio.Communicator, msg: Any) -> dict[str, Any]:
        return {"echo": msg, "pid": os.getpid()}

    async def on_broadcast(self, _comm: kiwitrio.Communicator, body: Any, _sender: Any,
                           _subject: Any, _correlation_id: Any) -> None:
        seq = body.get("seq") if isinstance(body, dict) else None
        self._log.append(f"broadcast {seq}")

    def on_state(self, state: kiwitrio.ConnectionState) -> None:
        self._log.append(f"state {state.value}")


async def _stop_on_signal(
    signals: AsyncIterator[int], log: TaskLog, scope: trio.CancelScope
) -> None:
    async for signum in signals:
        log.append(f"stopped {signal.Signals(signum).name}")
        scope.cancel()
        return


async def _read_stdin(worker: Worker, log: TaskLog, scope: trio.CancelScope, *,
                      exit_on_eof: bool) -> None:
    """Open the worker's gate on a ``release`` line; on end of file, stop the worker if
    ``exit_on_eof``."""
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    pending = b""
    async with stdin:
        while chunk := await stdin.receive_some():
            *lines, pending = (pending + chunk).split(b"\n")
            if b"release" in lines:
                worker.released.set()
                worker.released_sync.set()
    if exit_on_eof:
        log.append("stopped stdin-eof")
        scope.cancel()


def _connection_options(args: argparse.Namespace, worker: Worker) -> dict[str, Any]:
    """Heartbeat, reconnection policy and state logging, only where asked for."""
    options: dict[str, Any] = {}
    if args.heartbeat is not None:
        options["heartbeat"] = args.heartbeat
    if (args.reconnect_delay, args.reconnect_max_delay, args.startup_give_up_after) != (
            None, None, None):
        defaults = kiwitrio.ReconnectPolicy()
        initial_delay = (args.reconnect_delay if args.reconnect_delay is not None
                         else defaults.initial_delay)
        options["reconnect"] = kiwitrio.ReconnectPolicy(
            initial_delay=initial_delay,
            max_delay=(args.reconnect_max_delay if args.reconnect_max_delay is not None
                       else defaults.max_delay),
            jitter=min(defaults.jitter, initial_delay),
            startup_give_up_after=(args.startup_give_up_after
                                   if args.startup_give_up_after is not None
                                   else defaults.startup_give_up_after),
        )
    if args.log_states:
        options["on_connection_state"] = worker.on_state
    if args.finished_tasks:
        options["finished_tasks"] = kiwitrio.SqliteFinishedTasks(args.finished_tasks)
    if args.queue_type:
        options["queue_type"] = args.queue_type
    if args.delivery_limit is not None:
        options["delivery_limit"] = args.delivery_limit
    return options


async def run_worker(args: argparse.Namespace, log: TaskLog) -> None:
    worker = Worker(log, block_slow=args.block_slow, log_starts=args.log_starts)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with kiwitrio.open_communicator(
            args.url[0] if len(args.url) == 1 else args.url,
            message_exchange=args.message_exchange,
            task_exchange=args.task_exchange,
            task_queue=args.task_queue,
            task_prefetch_count=args.prefetch,
            testing_mode=True,
            **_connection_options(args, worker),
        ) as comm:
            await comm.add_task_subscriber(worker.on_task_sync if args.sync else worker.on_task)
            if args.rpc_id:
                await comm.add_rpc_subscriber(worker.on_rpc, args.rpc_id)
            if args.broadcasts:
                await comm.add_broadcast_subscriber(
                    kiwitrio.BroadcastFilter(worker.on_broadcast, subject="faults.*"))
            print("ready", flush=True)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_stop_on_signal, signals, log, nursery.cancel_scope)
                if args.exit_on_stdin_eof or args.hold_until_released:
                    nursery.start_soon(functools.partial(
                        _read_stdin, worker, log, nursery.cancel_scope,
                        exit_on_eof=args.exit_on_stdin_eof))
        # Leaving the communicator block gave back the tasks still being worked on.


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", required=True, action="append",
                        help="broker URL (amqp://...); again for each node of a cluster")
    parser.add_argument("--message-exchange", required=True)
    parser.add_argument("--task-exchange", required=True)
    parser.add_argument("--task-queue", required=True)
    parser.add_argument("--prefetch", type=int, default=1, help="task_prefetch_count")
    parser.add_argument("--log", required=True, help="file to append task events to")
    parser.add_argument("--block-slow", action="store_true",
                        help='block forever on tasks marked "slow" (after logging "started")')
    parser.add_argument("--exit-on-stdin-eof", action="store_true",
                        help="exit cleanly when stdin closes (the parent went away)")
    parser.add_argument("--sync", action="store_true",
                        help="subscribe a plain function (run in a thread) instead of an async one")
    parser.add_argument("--log-starts", action="store_true",
                        help='log "started <n>" before every task, not only slow ones')
    parser.add_argument("--log-states", action="store_true",
                        help='log "state <value>" on every connection state change')
    parser.add_argument("--rpc-id", help="also answer RPCs sent to this identifier")
    parser.add_argument("--broadcasts", action="store_true",
                        help='log "broadcast <seq>" for broadcasts on subject faults.*')
    parser.add_argument("--heartbeat", type=float, help="heartbeat interval in seconds")
    parser.add_argument("--hold-until-released", action="store_true",
                        help='tasks marked "hold" wait for a "release" line on stdin')
    parser.add_argument("--reconnect-delay", type=float,
                        help="first reconnection delay (seconds)")
    parser.add_argument("--reconnect-max-delay", type=float,
                        help="longest reconnection delay (seconds)")
    parser.add_argument("--startup-give-up-after", type=float,
                        help="how long to keep trying to connect at start-up (seconds)")
    parser.add_argument("--finished-tasks", metavar="PATH",
                        help="remember finished tasks in this SQLite file (shared by workers)")
    parser.add_argument("--queue-type", choices=["classic", "quorum"],
                        help="declare the durable queues as this type")
    parser.add_argument("--delivery-limit", type=int,
                        help="redeliveries allowed per task (with --queue-type quorum)")
    args = parser.parse_args(argv)
    if args.sync and args.block_slow:
        parser.error("--block-slow needs the async subscriber (not --sync)")
    return args


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
