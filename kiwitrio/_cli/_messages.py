"""``kiwitrio send``, ``rpc``, ``broadcast`` and ``listen``: messages from a shell."""

from __future__ import annotations

import argparse
import functools
import math
import signal
import sys
from collections.abc import Callable
from typing import Any, TextIO

import trio

import kiwitrio

from ._args import parse_value, positive_int_arg, seconds_arg, subject_arg
from ._common import CliError, Command, ExitCode, communicator, logger
from ._output import eprint, plural, to_json

__all__ = ["COMMANDS", "add_commands", "check_args", "run"]

COMMANDS = ("send", "rpc", "broadcast", "listen")


def add_commands(command: Command) -> None:
    send = command(
        "send", "send tasks; with --wait, print their results",
        "Send each TASK (or, with none given, each non-empty line of stdin) as a task. "
        "With --wait, print each result as one JSON line, in the order they arrive (with "
        "--ordered: in the order of the tasks; with --with-task: together with its task); a "
        "task that raised is reported on stderr and makes the exit code 1.",
    )
    send.add_argument("tasks", nargs="*", metavar="TASK")
    send.add_argument("--queue", metavar="NAME", help="task queue (default: --task-queue)")
    send.add_argument("--json", action="store_true", help="parse each task as JSON")
    replies = send.add_mutually_exclusive_group()
    replies.add_argument("--wait", action="store_true", help="wait for the results, print them")
    replies.add_argument("--no-reply", action="store_true",
                         help="ask for no results (what happens anyway without --wait)")
    send.add_argument("--timeout", type=seconds_arg, metavar="S",
                      help="give up S seconds after connecting (exit code 5)")
    send.add_argument("--ordered", action="store_true",
                      help="with --wait: print the results in the order of the tasks")
    send.add_argument("--with-task", action="store_true",
                      help='with --wait: print {"task": TASK, "result": RESULT} lines, and '
                           'failures as {"task": TASK, "error": {"type": ..., "message": ...}} '
                           "(on stdout too)")

    rpc = command("rpc", "call an RPC subscriber and print its answer (as JSON)")
    rpc.add_argument("identifier", metavar="ID")
    rpc.add_argument("message", metavar="MESSAGE")
    rpc.add_argument("--json", action="store_true", help="parse MESSAGE as JSON")
    rpc.add_argument("--timeout", type=seconds_arg, metavar="S",
                     help="give up S seconds after connecting (exit code 5)")

    broadcast = command("broadcast", "send a broadcast")
    broadcast.add_argument("body", metavar="BODY")
    broadcast.add_argument("--subject", type=subject_arg,
                           help="the subject (also the routing key; at most 255 bytes)")
    broadcast.add_argument("--sender", help="the sender")
    broadcast.add_argument("--correlation-id", help="a correlation id")
    broadcast.add_argument("--json", action="store_true", help="parse BODY as JSON")

    listen = command(
        "listen", "print broadcasts as JSON lines",
        "Print each matching broadcast as one JSON line (body, sender, subject, "
        "correlation_id) until --count broadcasts came, --timeout expired, or SIGINT/SIGTERM. "
        "PATTERNs use * for any run of characters. Exits 5 if --timeout expires before "
        "--count broadcasts came, else 0.",
    )
    listen.add_argument("--subject", metavar="PATTERN", type=subject_arg,
                        help="only broadcasts with this subject")
    listen.add_argument("--sender", metavar="PATTERN", help="only broadcasts from this sender")
    listen.add_argument("--count", type=positive_int_arg, metavar="N", help="stop after N")
    listen.add_argument("--timeout", type=seconds_arg, metavar="S", help="stop after S seconds")


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """What argparse cannot say: --ordered and --with-task go with --wait."""
    if args.command == "send" and not args.wait:
        given = [flag for flag, on in (("--ordered", args.ordered),
                                       ("--with-task", args.with_task)) if on]
        if given:
            parser.error(f"{' and '.join(given)} need --wait")


def run(args: argparse.Namespace) -> int:
    if args.command == "send":
        return trio.run(cmd_send, args, read_tasks(args))
    if args.command == "rpc":
        return trio.run(cmd_rpc, args, parse_value(args.message, args.json, "MESSAGE"))
    if args.command == "broadcast":
        return trio.run(cmd_broadcast, args, parse_value(args.body, args.json, "BODY"))
    return trio.run(cmd_listen, args)


#: ``send`` shows a progress bar (on a terminal) for more tasks than this.
PROGRESS_MIN_TASKS = 20


class Progress:
    """A one-line text progress bar on a terminal (does nothing when disabled)."""

    WIDTH = 30

    def __init__(self, total: int, label: str, enabled: bool, stream: TextIO | None = None):
        self.total = total
        self.label = label
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.done = 0
        self._shown = 0

    def update(self, done: int) -> None:
        self.done = done
        self.draw()

    def draw(self) -> None:
        if not self.enabled:
            return
        filled = self.WIDTH * self.done // max(self.total, 1)
        line = (f"{self.label} [{'#' * filled}{'.' * (self.WIDTH - filled)}] "
                f"{self.done}/{self.total}")
        self.stream.write("\r" + line.ljust(self._shown))
        self.stream.flush()
        self._shown = len(line)

    def clear(self) -> None:
        if self.enabled and self._shown:
            self.stream.write("\r" + " " * self._shown + "\r")
            self.stream.flush()
            self._shown = 0



def read_tasks(args: argparse.Namespace) -> list[Any]:
    texts: list[str] = list(args.tasks)
    if not texts:
        if sys.stdin.isatty():
            eprint("kiwitrio: reading tasks from stdin, one per line (end with Ctrl-D)")
        texts = [line.rstrip("\r\n") for line in sys.stdin]
        texts = [text for text in texts if text.strip()]
        if not texts:
            raise CliError("no tasks: give them as arguments or as lines on stdin", ExitCode.USAGE)
    return [parse_value(text, args.json, f"task {i}") for i, text in enumerate(texts, 1)]


class _InOrder:
    """Runs each task's report once it is due: at once, or (``ordered``) once the reports
    of every task before it ran, so that output follows the order of the tasks."""

    def __init__(self, ordered: bool) -> None:
        self._ordered = ordered
        self._held: dict[int, Callable[[], None]] = {}
        self._next = 1

    def put(self, index: int, report: Callable[[], None]) -> None:
        if not self._ordered:
            report()
            return
        self._held[index] = report
        while self._next in self._held:
            self._held.pop(self._next)()
            self._next += 1


def _result_line(args: argparse.Namespace, task: Any, result: Any) -> str:
    return to_json({"task": task, "result": result} if args.with_task else result)


def _error_line(task: Any, exc: kiwitrio.RemoteException) -> str:
    return to_json({"task": task, "error": {"type": exc.remote_type,
                                            "message": exc.remote_message}})


async def cmd_send(args: argparse.Namespace, tasks: list[Any]) -> int:
    queue = args.queue or args.task_queue
    show_progress = len(tasks) > PROGRESS_MIN_TASKS and sys.stderr.isatty()
    progress = Progress(len(tasks), "results" if args.wait else "sent", show_progress)
    failures = arrived = 0
    stdout_is_terminal = sys.stdout.isatty()
    reports = _InOrder(args.ordered)

    def report_failure(index: int, task: Any, exc: kiwitrio.RemoteException) -> None:
        progress.clear()
        eprint(f"kiwitrio: task {index} failed: {exc.remote_type}: {exc.remote_message}")
        if args.verbose and exc.remote_traceback:
            eprint(exc.remote_traceback.rstrip())
        if args.with_task:
            print(_error_line(task, exc), flush=True)

    def report_result(task: Any, result: Any) -> None:
        if stdout_is_terminal:  # the bar and the results share the screen
            progress.clear()
        print(_result_line(args, task, result), flush=True)

    async def wait_for(index: int, handle: kiwitrio.ResultHandle) -> None:
        nonlocal failures, arrived
        task = tasks[index - 1]
        try:
            result = await handle
        except kiwitrio.RemoteException as exc:
            failures += 1
            # partial, not a lambda: the name exc is gone when the except block ends, and
            # an ordered report may run later.
            reports.put(index, functools.partial(report_failure, index, task, exc))
        else:
            reports.put(index, functools.partial(report_result, task, result))
        arrived += 1
        progress.update(arrived)

    # The deadline is inside the communicator block, so that a timeout still leaves it
    # normally: the communicator then deletes its reply queue.
    async with communicator(args, task_queue=queue) as comm:
        with trio.move_on_after(args.timeout or math.inf) as deadline:
            if not args.wait:
                for index, task in enumerate(tasks, 1):
                    await comm.task_send(task, no_reply=True)
                    progress.update(index)
            else:
                progress.draw()
                async with trio.open_nursery() as nursery:
                    for index, task in enumerate(tasks, 1):
                        handle = await comm.task_send(task)
                        nursery.start_soon(wait_for, index, handle)
    progress.clear()
    if deadline.cancelled_caught:
        what = f"{arrived} of {len(tasks)} results arrived" if args.wait else "sending"
        raise CliError(f"timed out after {args.timeout:g} s ({what})", ExitCode.TIMEOUT)
    if not args.wait:
        eprint(f"kiwitrio: sent {plural(len(tasks), 'task')} to queue {queue!r}")
    if failures:
        eprint(f"kiwitrio: {failures} of {plural(len(tasks), 'task')} failed")
        return ExitCode.FAILURE
    return ExitCode.OK


async def cmd_rpc(args: argparse.Namespace, message: Any) -> int:
    error: CliError | None = None
    # Errors are raised after the communicator block is left normally (see cmd_send).
    async with communicator(args) as comm:
        with trio.move_on_after(args.timeout or math.inf) as deadline:
            try:
                answer = await (await comm.rpc_send(args.identifier, message))
            except kiwitrio.UnroutableError:
                error = CliError(f"nobody subscribes to the RPC identifier {args.identifier!r} "
                                 f"(on exchange {args.message_exchange!r})", ExitCode.UNROUTABLE)
            except kiwitrio.RemoteException as exc:
                if args.verbose and exc.remote_traceback:
                    eprint(exc.remote_traceback.rstrip())
                error = CliError(f"{args.identifier!r} raised {exc.remote_type}: "
                                 f"{exc.remote_message}", ExitCode.FAILURE)
    if deadline.cancelled_caught:
        raise CliError(f"timed out after {args.timeout:g} s waiting for {args.identifier!r}",
                       ExitCode.TIMEOUT)
    if error is not None:
        raise error
    print(to_json(answer), flush=True)
    return ExitCode.OK


async def cmd_broadcast(args: argparse.Namespace, body: Any) -> int:
    async with communicator(args) as comm:
        await comm.broadcast_send(body, sender=args.sender, subject=args.subject,
                                  correlation_id=args.correlation_id)
    logger.info("broadcast sent")
    return ExitCode.OK


async def cmd_listen(args: argparse.Namespace) -> int:
    received = 0
    finished = trio.Event()

    async def on_broadcast(comm: kiwitrio.Communicator, body: Any, sender: Any, subject: Any,
                           correlation_id: Any) -> None:
        nonlocal received
        if finished.is_set():
            return
        line = to_json({"body": body, "sender": sender, "subject": subject,
                        "correlation_id": correlation_id})
        try:
            print(line, flush=True)
        except (BrokenPipeError, ValueError):  # the reader went away (e.g. `| head -n 3`)
            finished.set()
            return
        received += 1
        if args.count is not None and received >= args.count:
            finished.set()

    timed_out = False
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with communicator(args) as comm, trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                async for _ in signals:
                    finished.set()

            nursery.start_soon(watch_signals)
            await comm.add_broadcast_subscriber(
                kiwitrio.BroadcastFilter(on_broadcast, subject=args.subject, sender=args.sender)
            )
            filters = "".join(f", {name} {value!r}" for name, value in
                              (("subject", args.subject), ("sender", args.sender)) if value)
            eprint(f"kiwitrio: listening for broadcasts on exchange {args.message_exchange!r}"
                   f"{filters}")
            with trio.move_on_after(args.timeout or math.inf) as waiting:
                await finished.wait()
            timed_out = waiting.cancelled_caught
            nursery.cancel_scope.cancel()
    if timed_out and args.count is not None:
        raise CliError(f"timed out after {args.timeout:g} s ({received} of {args.count} "
                       "broadcasts received)", ExitCode.TIMEOUT)
    return ExitCode.OK


