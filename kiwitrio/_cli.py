"""The ``kiwitrio`` command line: workers, tasks, RPC and broadcasts from a shell.

    kiwitrio worker mytasks:square --concurrency 4     # run a task worker until Ctrl-C/SIGTERM
    kiwitrio send --json --wait 1 2 3                  # send three tasks, print their results
    seq 100 | kiwitrio send --json --wait              # one task per stdin line
    kiwitrio rpc process-42 status                     # call an RPC subscriber
    kiwitrio broadcast --subject jobs.done '{"pk": 1}' --json
    kiwitrio listen --subject 'jobs.*' --count 10      # print broadcasts as JSON lines
    kiwitrio status                                    # is the broker there? which queues?
    kiwitrio delete mytasks                            # a task queue and its dead letters
    kiwitrio demo                                      # the demo of a source checkout
    kiwitrio bench                                     # its benchmark

``python -m kiwitrio`` is the same command. The options ``--url`` (default ``$KIWITRIO_URL``,
else ``amqp://guest:guest@127.0.0.1:5672/``), ``--message-exchange``, ``--task-exchange``,
``--task-queue`` (as for :func:`kiwitrio.open_communicator`), ``--connect-timeout`` (how long
to keep trying to reach the broker at start: 3 s for send, rpc and broadcast, kiwitrio's
default reconnection policy for worker and listen) and ``-v`` (more logging, and tracebacks on
errors) go before or after the command.

Errors print one line, ``kiwitrio: error: ...``, on stderr (a traceback only with ``-v``).
Exit codes:

    0    success (``worker`` and ``listen`` stopped by SIGINT/SIGTERM also exit 0)
    1    a task or RPC failed remotely (RemoteException), the broker refused the login or
         the vhost (ConnectionRefusedByBroker), or another kiwitrio error
    2    usage error: bad arguments (a URL that cannot be parsed, a subject over 255 bytes),
         bad JSON, MODULE:FUNCTION not importable
    3    unroutable: no RPC subscriber with that identifier, or no such task queue
    4    the broker cannot be reached (ConnectionFailed)
    5    timeout (``--timeout`` expired)
    130  interrupted (Ctrl-C)
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib
import importlib.util
import inspect
import json
import logging
import math
import os
import signal
import sys
import textwrap
import traceback
import urllib.parse
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, NoReturn, TextIO

import trio

import kiwitrio

from ._communicator import (
    DEFAULT_MESSAGE_EXCHANGE,
    DEFAULT_TASK_EXCHANGE,
    DEFAULT_TASK_QUEUE,
)
from ._groups import BaseExceptionGroup
from ._invoke import call_subscriber
from ._saferepr import describe_error, safe_repr

__all__ = [
    "EXIT_CONNECTION_FAILED",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_UNROUTABLE",
    "EXIT_USAGE",
    "main",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNROUTABLE = 3
EXIT_CONNECTION_FAILED = 4
EXIT_TIMEOUT = 5
EXIT_INTERRUPTED = 130

PROG = "kiwitrio"
URL_ENV = "KIWITRIO_URL"
#: How long send, rpc and broadcast try to reach the broker (worker and listen: the default
#: reconnection policy of open_communicator).
ONE_SHOT_CONNECT_TIMEOUT = 3.0
ONE_SHOT_COMMANDS = ("send", "rpc", "broadcast")
#: ``send`` shows a progress bar (on a terminal) for more tasks than this.
PROGRESS_MIN_TASKS = 20

logger = logging.getLogger("kiwitrio.cli")  # a public name (docs/configuration.md#logging)

EPILOG = """\
exit codes:
  0    success (worker and listen stopped by SIGINT/SIGTERM also exit 0)
  1    a task or RPC failed remotely, the broker refused the login or the vhost, or
       another kiwitrio error
  2    usage error: bad arguments (a URL that cannot be parsed, a subject over 255
       bytes), bad JSON, MODULE:FUNCTION not importable
  3    unroutable: no RPC subscriber with that identifier, or no such task queue
  4    the broker cannot be reached
  5    timeout (--timeout expired)
  130  interrupted (Ctrl-C)

examples:
  kiwitrio worker mytasks:square --concurrency 4
  kiwitrio send --json --wait 1 2 3
  seq 100 | kiwitrio send --json --wait
  kiwitrio rpc process-42 status
  kiwitrio listen --subject 'state_changed.*' --count 10
"""


class CliError(Exception):
    """A user-facing error: printed as one line, exits with ``code``."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


# -- argument parsing -------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, not {value}")
    return value


def _non_negative_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, not {text}")
    return value


#: AMQP's limit on a routing key, hence on a broadcast subject and a subject pattern.
MAX_SUBJECT_BYTES = 255


def _subject(text: str) -> str:
    size = len(text.encode())
    if size > MAX_SUBJECT_BYTES:
        raise argparse.ArgumentTypeError(
            f"at most {MAX_SUBJECT_BYTES} bytes (AMQP's limit on routing keys), not {size}")
    return text


def _global_options() -> argparse.ArgumentParser:
    """Options accepted before and after the command (``default=SUPPRESS``, see _defaults)."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection and logging")
    group.add_argument("--url", default=argparse.SUPPRESS,
                       help=f"broker URL: amqp://, amqps:// or memory:// (default: ${URL_ENV}, "
                            f"else {kiwitrio.DEFAULT_URL})")
    group.add_argument("--message-exchange", default=argparse.SUPPRESS, metavar="NAME",
                       help=f"exchange for RPC and broadcasts (default {DEFAULT_MESSAGE_EXCHANGE})")
    group.add_argument("--task-exchange", default=argparse.SUPPRESS, metavar="NAME",
                       help=f"exchange for tasks (default {DEFAULT_TASK_EXCHANGE})")
    group.add_argument("--task-queue", default=argparse.SUPPRESS, metavar="NAME",
                       help=f"the default task queue (default {DEFAULT_TASK_QUEUE})")
    group.add_argument("--connect-timeout", type=_non_negative_seconds, metavar="S",
                       default=argparse.SUPPRESS,
                       help="keep trying to reach the broker for S seconds at start, 0: try "
                            f"once (default: {ONE_SHOT_CONNECT_TIMEOUT:g} for send, rpc and "
                            "broadcast; kiwitrio's default reconnection policy for worker and "
                            "listen); then exit with code 4")
    group.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                       help="log more (-v: kiwitrio info, -vv: debug, -vvv: everything) and "
                            "show tracebacks on errors")
    group.add_argument("--testing", action="store_true", default=argparse.SUPPRESS,
                       help="testing mode (testing_mode=True): auto-delete exchanges and "
                            "expiring queues, so that tests and demos leave nothing behind. "
                            "Every side must agree: a queue or exchange declared with it "
                            "cannot be declared without it (and the other way round)")
    return common


def _defaults() -> dict[str, Any]:
    return {
        "url": os.environ.get(URL_ENV) or kiwitrio.DEFAULT_URL,
        "message_exchange": DEFAULT_MESSAGE_EXCHANGE,
        "task_exchange": DEFAULT_TASK_EXCHANGE,
        "task_queue": DEFAULT_TASK_QUEUE,
        "connect_timeout": None,
        "verbose": 0,
        "testing": False,
    }


def build_parser() -> argparse.ArgumentParser:
    common = _global_options()
    parser = argparse.ArgumentParser(
        prog=PROG, parents=[common], epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Tasks, RPC and broadcasts over RabbitMQ from the command line "
                    f"(kiwitrio {kiwitrio.__version__}).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {kiwitrio.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, parents=[common], help=help,
            description=textwrap.fill(description or help, width=88),
            epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    worker = command(
        "worker", "run a task worker until SIGINT or SIGTERM",
        "Import FUNCTION from MODULE and call FUNCTION(communicator, task) for each task of "
        "the task queue; its return value is the task's result. FUNCTION may be async or "
        "plain (plain ones run in threads). On SIGINT/SIGTERM, unfinished tasks go back to "
        "the queue. The current directory is searched for MODULE.",
    )
    worker.add_argument("function", metavar="MODULE:FUNCTION",
                        help="e.g. mytasks:square or mypackage.tasks:Worker.run")
    worker.add_argument("--queue", metavar="NAME", help="task queue (default: --task-queue)")
    worker.add_argument("--concurrency", type=_positive_int, default=1, metavar="N",
                        help="tasks worked on at once (the prefetch count; default 1)")
    worker.add_argument("--metrics-port", type=_port, metavar="N",
                        help="serve Prometheus metrics on port N of every interface (0: any "
                             "free port); needs prometheus_client: pip install "
                             "'kiwitrio[metrics]'")

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
    send.add_argument("--timeout", type=_seconds, metavar="S",
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
    rpc.add_argument("--timeout", type=_seconds, metavar="S",
                     help="give up S seconds after connecting (exit code 5)")

    broadcast = command("broadcast", "send a broadcast")
    broadcast.add_argument("body", metavar="BODY")
    broadcast.add_argument("--subject", type=_subject,
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
    listen.add_argument("--subject", metavar="PATTERN", type=_subject,
                        help="only broadcasts with this subject")
    listen.add_argument("--sender", metavar="PATTERN", help="only broadcasts from this sender")
    listen.add_argument("--count", type=_positive_int, metavar="N", help="stop after N")
    listen.add_argument("--timeout", type=_seconds, metavar="S", help="stop after S seconds")

    from . import _cli_inspect, _cli_queues  # here: they import this module

    _cli_queues.add_commands(command)
    _cli_inspect.add_commands(command)
    command("demo", "run the end-to-end demo (examples/demo.py; extra options go to it)")
    command("bench", "run the benchmark suite (benchmarks/run.py; extra options go to it)")
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in ("demo", "bench"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    if args.command == "send" and not args.wait:
        given = [flag for flag, on in (("--ordered", args.ordered),
                                       ("--with-task", args.with_task)) if on]
        if given:
            parser.error(f"{' and '.join(given)} need --wait")
    for name, value in _defaults().items():
        if not hasattr(args, name):
            setattr(args, name, value)
    if not args.url.startswith(("amqp:", "amqps:", "memory:")):
        parser.error(f"unsupported broker URL {redact(args.url)!r}: use amqp://, amqps:// "
                     "or memory://")
    return args


# -- helpers ------------------------------------------------------------------------------------


def redact(url: str) -> str:
    """``url`` without its password."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    userinfo, host = parts.netloc.rsplit("@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{userinfo.split(':')[0]}:***@{host}"))


def eprint(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def parse_value(text: str, as_json: bool, what: str) -> Any:
    if not as_json:
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{what} is not valid JSON ({exc.msg}, column {exc.colno}): "
                       f"{text[:80]!r}", EXIT_USAGE) from exc


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, (set, frozenset)):
        return list(value)
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    return repr(value)


def to_json(value: Any) -> str:
    """One line of JSON for anything CBOR can carry (bytes as text, other oddities as repr)."""
    try:
        return json.dumps(value, default=_json_default, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):  # keys that are not str/int/float...
        # ...or a value whose repr() raises itself (an int too long to print): described.
        return json.dumps(safe_repr(value, 10_000), ensure_ascii=False)


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


def communicator(args: argparse.Namespace, **overrides: Any
                 ) -> AbstractAsyncContextManager[kiwitrio.Communicator]:
    options: dict[str, Any] = {
        "message_exchange": args.message_exchange,
        "task_exchange": args.task_exchange,
        "task_queue": args.task_queue,
        "testing_mode": args.testing,
    }
    connect_timeout = args.connect_timeout
    if connect_timeout is None and args.command in ONE_SHOT_COMMANDS:
        connect_timeout = ONE_SHOT_CONNECT_TIMEOUT
    if connect_timeout is not None:
        options["reconnect"] = kiwitrio.ReconnectPolicy(startup_give_up_after=connect_timeout)
    options.update(overrides)
    return kiwitrio.open_communicator(args.url, **options)


def load_function(spec: str) -> Callable[..., Any]:
    """Import ``MODULE:FUNCTION`` (FUNCTION may be dotted), searching the current directory."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise CliError(f"expected MODULE:FUNCTION (e.g. mytasks:square), got {spec!r}",
                       EXIT_USAGE)
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            raise CliError(f"cannot import {module_name!r}: no module named {exc.name!r} "
                           "(is it in the current directory or on PYTHONPATH?)",
                           EXIT_USAGE) from exc
        raise CliError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}",
                       EXIT_USAGE) from exc
    except Exception as exc:
        raise CliError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}",
                       EXIT_USAGE) from exc
    obj: Any = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CliError(f"{module_name!r} has no attribute {attribute!r}",
                           EXIT_USAGE) from None
    if not callable(obj):
        raise CliError(f"{spec} is not callable (it is a {type(obj).__name__})", EXIT_USAGE)
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return obj  # type: ignore[no-any-return]  # a builtin without a signature: try it
    try:
        signature.bind(None, None)
    except TypeError:
        raise CliError(f"{spec} must take two arguments (communicator, task); its signature "
                       f"is {signature}", EXIT_USAGE) from None
    return obj  # type: ignore[no-any-return]


def start_metrics(port: int | None) -> Any:
    """Serve the worker's metrics on ``port`` (None: no metrics); returns the server.

    prometheus_client is imported here only: without ``--metrics-port`` it is never needed.
    """
    if port is None:
        return None
    try:
        from . import _prometheus
    except ImportError as exc:
        if not (exc.name or "").startswith("prometheus_client"):
            raise
        raise CliError("--metrics-port needs prometheus_client, which is not installed: "
                       "pip install 'kiwitrio[metrics]'", EXIT_USAGE) from exc
    try:
        server, bound = _prometheus.serve(port)
    except OSError as exc:
        raise CliError(f"cannot serve metrics on port {port}: {exc}") from exc
    eprint(f"kiwitrio: metrics on http://0.0.0.0:{bound}/metrics")
    return server


# -- commands ----------------------------------------------------------------------------------


class _WorkerCounts:
    """What ``kiwitrio worker`` did with its tasks, for its last line."""

    def __init__(self) -> None:
        self.done = self.failed = self.rejected = self.given_back = 0

    def summary(self) -> str:
        extra = "".join(f", {count} {what}" for count, what in (
            (self.rejected, "rejected"), (self.given_back, "given back")) if count)
        return f"{_plural(self.done, 'task')} done, {self.failed} failed{extra}"


def _task_identity(task: Any) -> str:
    """How the worker's log lines name a task: its id (the sender's correlation id), and
    a bounded look at the task itself."""
    try:
        task_id = kiwitrio.current_delivery().correlation_id
    except LookupError:
        task_id = None
    return f"task {task_id or '(sent with no_reply)'} ({safe_repr(task, 80)})"


class _WorkerReportsFailures(logging.Filter):
    """Drops the core's own line about a failed task: the worker says it once, louder."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("task subscriber raised")


def _task_runner(function: Callable[..., Any], counts: _WorkerCounts,
                 verbose: int) -> Callable[..., Any]:
    async def run_task(comm: kiwitrio.Communicator, task: Any) -> Any:
        try:
            result = await call_subscriber(function, comm, task)
            # Encoded here too, so that a result that cannot be sent counts (and is told)
            # as the failure it is for the sender, not as done.
            try:
                kiwitrio.cbor_encode(result)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"the result cannot be encoded: {exc}") from exc
        except kiwitrio.TaskRejected:
            counts.rejected += 1
            raise
        except trio.Cancelled:
            counts.given_back += 1  # stopping (SIGINT/SIGTERM): it goes back to the queue
            raise
        except Exception as exc:
            counts.failed += 1
            logger.warning("%s failed: %s", _task_identity(task), describe_error(exc),
                           exc_info=exc if verbose else None)
            raise
        counts.done += 1
        logger.info("%s done", _task_identity(task))
        return result

    return run_task


async def cmd_worker(args: argparse.Namespace, function: Callable[..., Any]) -> int:
    queue = args.queue or args.task_queue
    counts = _WorkerCounts()
    run_task = _task_runner(function, counts, args.verbose)

    stopped_by = "?"
    ready = False
    # Signals are received from before connecting, so that an early Ctrl-C is not lost: until
    # the worker is ready one cancels the connection; after, it ends the communicator block
    # normally (unfinished tasks go back to the queue). Further signals are ignored.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as starting:

                async def watch_signals() -> None:
                    nonlocal stopped_by
                    async for signum in signals:
                        if not stop.is_set():
                            stopped_by = signal.Signals(signum).name
                            stop.set()
                            if not ready:
                                starting.cancel()

                nursery.start_soon(watch_signals)
                async with communicator(args, task_queue=queue,
                                        task_prefetch_count=args.concurrency) as comm:
                    await comm.add_task_subscriber(run_task)

                    def control_shutdown() -> None:  # kiwitrio control shutdown: as SIGTERM
                        nonlocal stopped_by
                        if not stop.is_set():
                            stopped_by = "control shutdown"
                            stop.set()

                    comm.on_control_shutdown(control_shutdown)
                    ready = True
                    props = comm.server_properties
                    print(f"kiwitrio worker ready: {args.function} on queue {queue!r} "
                          f"(concurrency {args.concurrency}, pid {os.getpid()}, "
                          f"{props.get('product', 'broker')} {props.get('version', '?')} at "
                          f"{redact(args.url)})", flush=True)
                    await stop.wait()
            nursery.cancel_scope.cancel()
    print(f"kiwitrio worker stopped ({stopped_by}): {counts.summary()}", flush=True)
    return EXIT_OK


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def read_tasks(args: argparse.Namespace) -> list[Any]:
    texts: list[str] = list(args.tasks)
    if not texts:
        if sys.stdin.isatty():
            eprint("kiwitrio: reading tasks from stdin, one per line (end with Ctrl-D)")
        texts = [line.rstrip("\r\n") for line in sys.stdin]
        texts = [text for text in texts if text.strip()]
        if not texts:
            raise CliError("no tasks: give them as arguments or as lines on stdin", EXIT_USAGE)
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
        raise CliError(f"timed out after {args.timeout:g} s ({what})", EXIT_TIMEOUT)
    if not args.wait:
        eprint(f"kiwitrio: sent {_plural(len(tasks), 'task')} to queue {queue!r}")
    if failures:
        eprint(f"kiwitrio: {failures} of {_plural(len(tasks), 'task')} failed")
        return EXIT_FAILURE
    return EXIT_OK


async def cmd_rpc(args: argparse.Namespace, message: Any) -> int:
    error: CliError | None = None
    # Errors are raised after the communicator block is left normally (see cmd_send).
    async with communicator(args) as comm:
        with trio.move_on_after(args.timeout or math.inf) as deadline:
            try:
                answer = await (await comm.rpc_send(args.identifier, message))
            except kiwitrio.UnroutableError:
                error = CliError(f"nobody subscribes to the RPC identifier {args.identifier!r} "
                                 f"(on exchange {args.message_exchange!r})", EXIT_UNROUTABLE)
            except kiwitrio.RemoteException as exc:
                if args.verbose and exc.remote_traceback:
                    eprint(exc.remote_traceback.rstrip())
                error = CliError(f"{args.identifier!r} raised {exc.remote_type}: "
                                 f"{exc.remote_message}", EXIT_FAILURE)
    if deadline.cancelled_caught:
        raise CliError(f"timed out after {args.timeout:g} s waiting for {args.identifier!r}",
                       EXIT_TIMEOUT)
    if error is not None:
        raise error
    print(to_json(answer), flush=True)
    return EXIT_OK


async def cmd_broadcast(args: argparse.Namespace, body: Any) -> int:
    async with communicator(args) as comm:
        await comm.broadcast_send(body, sender=args.sender, subject=args.subject,
                                  correlation_id=args.correlation_id)
    logger.info("broadcast sent")
    return EXIT_OK


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
                       "broadcasts received)", EXIT_TIMEOUT)
    return EXIT_OK


def run_repository_script(args: argparse.Namespace, relative: str, how: str) -> int:
    """Run ``main()`` of a script of the source checkout this package lives in."""
    path = Path(__file__).resolve().parent.parent / relative
    spec = importlib.util.spec_from_file_location(f"kiwitrio_{path.stem}", path)
    if not path.is_file() or spec is None or spec.loader is None:
        eprint(f"kiwitrio: {relative} is not installed with the package; it is part of the "
               f"source repository. In a checkout, run: {how}")
        return EXIT_USAGE
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    saved_argv = sys.argv
    sys.argv = [f"{PROG} {args.command}", "--url", args.url, *args.extra]
    try:
        spec.loader.exec_module(module)
        result = module.main()
    except SystemExit as exc:
        result = exc.code
    finally:
        sys.argv = saved_argv
    if result is None:
        return EXIT_OK
    return result if isinstance(result, int) else EXIT_FAILURE


# -- main ----------------------------------------------------------------------------------------


def _configure_logging(verbose: int, command: str) -> None:
    if verbose >= 3:
        level, ours = logging.DEBUG, logging.DEBUG
    else:
        level, ours = logging.WARNING, {0: logging.WARNING, 1: logging.INFO}.get(verbose,
                                                                                   logging.DEBUG)
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s" if verbose
                        else "kiwitrio: %(levelname)s: %(name)s: %(message)s")
    logging.getLogger("kiwitrio").setLevel(ours)
    if command == "worker":
        logging.getLogger("kiwitrio.tasks").addFilter(_WorkerReportsFailures())
    if not verbose:
        # Their errors are kiwitrio's errors too, and reported as such: not twice.
        for name in ("aiormq", "aio_pika"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        if command in ONE_SHOT_COMMANDS:
            # A line per connection attempt is news for a worker, noise for a quick command.
            logging.getLogger("kiwitrio.reconnect").setLevel(logging.ERROR)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _error(exc: BaseException) -> tuple[int, str]:
    """Exit code and one-line message for an exception that ended the command."""
    leaves = _leaves(exc)
    if any(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
        return EXIT_INTERRUPTED, "interrupted"
    leaf = next((leaf for leaf in leaves if not isinstance(leaf, trio.Cancelled)), leaves[0])
    if isinstance(leaf, CliError):
        return leaf.code, str(leaf)
    if isinstance(leaf, kiwitrio.ConnectionRefusedByBroker):
        # Reached, and refused: a setting to fix (its message says which), not an outage.
        return EXIT_FAILURE, str(leaf)
    if isinstance(leaf, kiwitrio.ConnectionFailed):
        return EXIT_CONNECTION_FAILED, str(leaf)
    if isinstance(leaf, kiwitrio.UnroutableError):
        return EXIT_UNROUTABLE, str(leaf)
    if isinstance(leaf, kiwitrio.RemoteException):
        return EXIT_FAILURE, f"remote {leaf.remote_type}: {leaf.remote_message}"
    if isinstance(leaf, trio.TooSlowError):
        return EXIT_TIMEOUT, "timed out"
    if isinstance(leaf, kiwitrio.KiwitrioError):
        return EXIT_FAILURE, f"{type(leaf).__name__}: {leaf}"
    if isinstance(leaf, TypeError) and "encode" in str(leaf):
        return EXIT_USAGE, str(leaf)
    if isinstance(leaf, ValueError):
        # kiwitrio refuses values it cannot use with ValueError (a URL it cannot parse, an
        # identifier, sender or message too long): given on the command line, a usage error.
        return EXIT_USAGE, str(leaf)
    return EXIT_FAILURE, f"unexpected {type(leaf).__name__}: {leaf}"


def _run(args: argparse.Namespace) -> int:
    if args.command == "worker":
        function = load_function(args.function)
        metrics = start_metrics(args.metrics_port)
        try:
            return trio.run(cmd_worker, args, function)
        finally:
            if metrics is not None:
                metrics.shutdown()
                metrics.server_close()
    if args.command == "send":
        return trio.run(cmd_send, args, read_tasks(args))
    if args.command == "rpc":
        return trio.run(cmd_rpc, args, parse_value(args.message, args.json, "MESSAGE"))
    if args.command == "broadcast":
        return trio.run(cmd_broadcast, args, parse_value(args.body, args.json, "BODY"))
    if args.command == "listen":
        return trio.run(cmd_listen, args)
    from . import _cli_inspect, _cli_queues

    if args.command in _cli_queues.COMMANDS:
        return trio.run(_cli_queues.run, args)
    if args.command in _cli_inspect.COMMANDS:
        return trio.run(_cli_inspect.run, args)
    if args.command == "demo":
        return run_repository_script(args, "examples/demo.py", "bash scripts/demo.sh")
    if args.command == "bench":
        return run_repository_script(args, "benchmarks/run.py", "nox -s bench")
    _unreachable(args.command)


def _unreachable(command: object) -> NoReturn:
    raise AssertionError(f"unknown command {command!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module docstring)."""
    args = parse_args(argv)
    _configure_logging(args.verbose, args.command)
    try:
        return _run(args)
    except SystemExit:
        raise
    except BaseException as exc:
        code, message = _error(exc)
        if args.verbose and code != EXIT_INTERRUPTED:
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        if code != EXIT_INTERRUPTED or args.verbose:
            eprint(f"{PROG}: error: {message}")
        else:
            eprint(f"{PROG}: interrupted")
        return code
