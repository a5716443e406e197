"""``kiwitrio worker MODULE:FUNCTION``: run a task worker until SIGINT, SIGTERM or a control
shutdown, reporting each failed task once and counting what it did."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import trio

import kiwitrio

from .._kinds._invoke import call_subscriber
from .._saferepr import describe_error, safe_repr
from ._args import port_arg, positive_int_arg
from ._common import CliError, Command, ExitCode, communicator, logger
from ._output import eprint, plural, redact

__all__ = ["COMMANDS", "add_commands", "run"]

COMMANDS = ("worker",)


def add_commands(command: Command) -> None:
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
    worker.add_argument("--concurrency", type=positive_int_arg, default=1, metavar="N",
                        help="tasks worked on at once (the prefetch count; default 1)")
    worker.add_argument("--tracing", action="store_true",
                        help="OpenTelemetry spans for each task, children of their senders' "
                             "(from the global tracer provider: configure an exporter, e.g. "
                             "run under opentelemetry-instrument); needs pip install "
                             "'kiwitrio[tracing]'")
    worker.add_argument("--finished-tasks", metavar="PATH",
                        help="remember finished tasks in this SQLite file (the workers of "
                             "a host can share it): a task that comes back after it finished "
                             "is answered from it, not run again")
    worker.add_argument("--metrics-port", type=port_arg, metavar="N",
                        help="serve Prometheus metrics on port N of every interface (0: any "
                             "free port); needs prometheus_client: pip install "
                             "'kiwitrio[metrics]'")


def run(args: argparse.Namespace) -> int:
    function = load_function(args.function)
    if args.tracing:
        start_tracing()
    metrics = start_metrics(args.metrics_port)
    try:
        return trio.run(cmd_worker, args, function)
    finally:
        if metrics is not None:
            metrics.shutdown()
            metrics.server_close()


def configure_logging() -> None:
    """The worker reports failed tasks itself (once, with the task): not the core too."""
    logging.getLogger("kiwitrio.tasks").addFilter(_WorkerReportsFailures())


def load_function(spec: str) -> Callable[..., Any]:
    """Import ``MODULE:FUNCTION`` (FUNCTION may be dotted), searching the current directory."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise CliError(f"expected MODULE:FUNCTION (e.g. mytasks:square), got {spec!r}",
                       ExitCode.USAGE)
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            raise CliError(f"cannot import {module_name!r}: no module named {exc.name!r} "
                           "(is it in the current directory or on PYTHONPATH?)",
                           ExitCode.USAGE) from exc
        raise CliError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}",
                       ExitCode.USAGE) from exc
    except Exception as exc:
        raise CliError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}",
                       ExitCode.USAGE) from exc
    obj: Any = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CliError(f"{module_name!r} has no attribute {attribute!r}",
                           ExitCode.USAGE) from None
    if not callable(obj):
        raise CliError(f"{spec} is not callable (it is a {type(obj).__name__})", ExitCode.USAGE)
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return obj  # type: ignore[no-any-return]  # a builtin without a signature: try it
    try:
        signature.bind(None, None)
    except TypeError:
        raise CliError(f"{spec} must take two arguments (communicator, task); its signature "
                       f"is {signature}", ExitCode.USAGE) from None
    return obj  # type: ignore[no-any-return]


def start_tracing() -> None:
    """Trace with OpenTelemetry's global tracer provider (imported here only)."""
    try:
        kiwitrio.enable_tracing()
    except ImportError as exc:
        raise CliError(str(exc), ExitCode.USAGE) from exc


def start_metrics(port: int | None) -> Any:
    """Serve the worker's metrics on ``port`` (None: no metrics); returns the server.

    prometheus_client is imported here only: without ``--metrics-port`` it is never needed.
    """
    if port is None:
        return None
    try:
        from .. import _prometheus
    except ImportError as exc:
        if not (exc.name or "").startswith("prometheus_client"):
            raise
        raise CliError("--metrics-port needs prometheus_client, which is not installed: "
                       "pip install 'kiwitrio[metrics]'", ExitCode.USAGE) from exc
    try:
        server, bound = _prometheus.serve(port)
    except OSError as exc:
        raise CliError(f"cannot serve metrics on port {port}: {exc}") from exc
    eprint(f"kiwitrio: metrics on http://0.0.0.0:{bound}/metrics")
    return server



class _WorkerCounts:
    """What ``kiwitrio worker`` did with its tasks, for its last line."""

    def __init__(self) -> None:
        self.done = self.failed = self.rejected = self.given_back = 0

    def summary(self) -> str:
        extra = "".join(f", {count} {what}" for count, what in (
            (self.rejected, "rejected"), (self.given_back, "given back")) if count)
        return f"{plural(self.done, 'task')} done, {self.failed} failed{extra}"


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
                finished = (None if args.finished_tasks is None
                            else kiwitrio.SqliteFinishedTasks(args.finished_tasks))
                # The store is closed after the communicator, which may still finish tasks.
                async with _closing(finished), communicator(
                        args, task_queue=queue, finished_tasks=finished,
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
    return ExitCode.OK


@contextlib.asynccontextmanager
async def _closing(store: kiwitrio.SqliteFinishedTasks | None) -> AsyncIterator[None]:
    """Close the worker's store of finished tasks (if any) when its communicator closed."""
    try:
        yield
    finally:
        if store is not None:
            store.close()
