"""What every bridge offers the AMQP backend, and what the implementations share.

A bridge runs aio-pika (asyncio) for Trio code. The AMQP backend needs five crossings:

* Trio awaits an asyncio coroutine: :meth:`AsyncioBridge.run`;
* Trio awaits what a plain asyncio-side function reports through a callback, with no
  asyncio task (publishes, whose only wait is for the broker's confirm):
  :meth:`AsyncioBridge.run_callback`;
* Trio starts an asyncio coroutine without waiting for it (channel closes):
  :meth:`AsyncioBridge.start_in_asyncio`;
* Trio calls a plain function in asyncio context without waiting for it (acks and rejects,
  for the channel's settler): :meth:`AsyncioBridge.call_soon_in_asyncio`;
* asyncio callbacks hand data to Trio (deliveries, "connection lost"):
  :meth:`AsyncioBridge.call_in_trio`.

Which thread runs which side is the implementation's business; nothing above the bridge may
touch an asyncio object from Trio code, or a Trio object from asyncio code, except through
these five.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import signal
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, ClassVar, TypeVar

import outcome

from .._errors import KiwitrioError

__all__ = [
    "AsyncioBridge",
    "AsyncioOperationAborted",
    "Report",
    "abort_open_transports",
    "block_process_signals",
    "call_in_asyncio",
    "describe",
    "log_asyncio_error",
    "process_signals_unblocked",
    "track_socket_transports",
]

logger = logging.getLogger("kiwitrio.bridge")

T = TypeVar("T")

#: What :meth:`AsyncioBridge.run_callback` hands its ``start`` function: call it once, in
#: asyncio context, with the outcome.
Report = Callable[[outcome.Outcome[Any]], None]


class AsyncioOperationAborted(ConnectionError, KiwitrioError):
    """The asyncio side cancelled an operation that its Trio caller had not cancelled.

    aiormq 6 (the one aio-pika 9.5 brings on Python 3.10) cancels the futures of pending
    operations when their connection or channel closes; aiormq 7 raises ``ConnectionError``
    for the same; a bridge that shuts down cancels whatever still runs in its loop. All of
    them reach callers as this ``ConnectionError`` (a KiwitrioError too, should one get past
    the session), which the AMQP session turns into
    :class:`~kiwitrio.ConnectionFailed`. An ``asyncio.CancelledError`` must never reach
    Trio code: it is not ``trio.Cancelled``, and nursery code would take it for a crash.
    """


class AsyncioBridge(abc.ABC):
    """Runs asyncio code for Trio code; see the module docstring for the three crossings."""

    #: "thread" or "trio-asyncio": what ``open_communicator(bridge=...)`` calls it.
    name: ClassVar[str]

    @abc.abstractmethod
    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await fn(*args)`` as an asyncio task and return its result.

        ``fn(*args)`` itself is called inside the asyncio task (aio-pika asks for the running
        loop in plain methods). Cancelling the Trio caller cancels the asyncio task, waits
        until it has finished, and raises ``trio.Cancelled``. If the asyncio side cancels the
        task instead (or the bridge is closing), :class:`AsyncioOperationAborted` is raised.
        """

    @abc.abstractmethod
    def start_in_asyncio(self, fn: Callable[..., Coroutine[Any, Any, object]],
                         *args: Any) -> None:
        """Start ``fn(*args)`` as an asyncio task, soon, without waiting for it.

        Callable from Trio and from asyncio code. Tasks started by one caller run in the
        order they were started. ``fn`` handles its own errors: an exception it lets out is
        only logged. Does nothing once the bridge is closed.
        """

    async def run_callback(self, start: Callable[..., object], *args: Any) -> Any:
        """Call the plain function ``start(report, *args)`` in asyncio context and return
        (or raise) the outcome it reports.

        ``start`` arranges for ``report(outcome)`` to be called once, later or at once, in
        asyncio context (from a future's done callback, say); later calls are ignored. An
        exception ``start`` raises is the outcome. Where a bridge overrides this default
        (the thread bridge), no asyncio task is made for the call.

        Cancellation: the caller raises ``trio.Cancelled`` at once; what ``start`` set going
        goes on, and its outcome is dropped. If the bridge closes before the outcome came,
        :class:`AsyncioOperationAborted` is raised.
        """
        async def wait() -> Any:
            reported: asyncio.Future[outcome.Outcome[Any]] = (
                asyncio.get_running_loop().create_future())

            def report(result: outcome.Outcome[Any]) -> None:
                if not reported.done():
                    reported.set_result(result)

            try:
                start(report, *args)
            except Exception as exc:
                report(outcome.Error(exc))
            return (await reported).unwrap()

        return await self.run(wait)

    def call_soon_in_asyncio(self, fn: Callable[..., object], *args: Any) -> None:
        """From Trio code: call the plain function ``fn(*args)`` in asyncio context, soon.

        Cheaper than :meth:`start_in_asyncio` (no asyncio task), for code that does not
        await. Runs in order with the caller's ``start_in_asyncio`` calls. ``fn`` must not
        raise: an exception is logged. Does nothing once the bridge is closed. Bridges
        override this default, which goes through a task.
        """
        self.start_in_asyncio(_call_plain, fn, args)

    @abc.abstractmethod
    def call_in_trio(self, fn: Callable[..., object], *args: Any) -> None:
        """From asyncio code: call the plain function ``fn(*args)`` in Trio context.

        ``fn`` may use synchronous Trio APIs only (``send_nowait``, ``Event.set``,
        ``trio.lowlevel.reschedule``) and must not raise: an exception is logged. Calls run
        in the order they were made.
        """


async def call_in_asyncio(fn: Callable[..., Awaitable[T]], args: tuple[Any, ...]) -> T:
    """The asyncio task body of :meth:`AsyncioBridge.run`: ``fn(*args)`` called inside it."""
    return await fn(*args)


async def _call_plain(fn: Callable[..., object], args: tuple[Any, ...]) -> None:
    try:
        fn(*args)
    except Exception:
        logger.exception("error in a call across the asyncio bridge: %s", describe(fn))


def describe(fn: Callable[..., object]) -> str:
    """A callable's name for messages: its qualified name, else its repr."""
    return str(getattr(fn, "__qualname__", fn))


def log_asyncio_error(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Report errors that asyncio code left unhandled, without crashing the communicator.

    The default handlers either log them without kiwitrio's logger (asyncio's) or re-raise
    them into the loop's nursery (trio-asyncio's), which would tear the whole communicator
    down for, say, a future aiormq never retrieved after a lost connection; kiwitrio
    notices and repairs lost connections itself.
    """
    exception = context.get("exception")
    logger.warning("asyncio: %s%s", context.get("message", "unhandled error"),
                   f": {exception!r}" if exception is not None else "")


def track_socket_transports(loop: asyncio.AbstractEventLoop,
                            ) -> weakref.WeakSet[asyncio.BaseTransport]:
    """Record every socket transport the loop makes, so that none outlives it.

    Selector loops make their socket transports in ``_make_socket_transport``; a loop
    without it is left alone (nothing is tracked, nothing is aborted).
    """
    transports: weakref.WeakSet[asyncio.BaseTransport] = weakref.WeakSet()
    make_transport = getattr(loop, "_make_socket_transport", None)
    if make_transport is None:
        return transports

    def make_tracked_transport(*args: Any, **kwargs: Any) -> asyncio.BaseTransport:
        transport: asyncio.BaseTransport = make_transport(*args, **kwargs)
        transports.add(transport)
        return transport

    loop._make_socket_transport = make_tracked_transport  # type: ignore[attr-defined]
    return transports


def abort_open_transports(transports: weakref.WeakSet[asyncio.BaseTransport]) -> None:
    """Abort the transports still open; call from the loop's thread, before it stops."""
    # aiormq 6 (Python 3.10) leaves a connection's socket half-open when the broker side
    # goes away (EOF seen, transport never closed). The loop is about to stop: close what
    # is left, so that no socket leaks past the bridge.
    for transport in list(transports):
        if not transport.is_closing() and isinstance(transport, asyncio.Transport):
            logger.debug("aborting a transport left open: %r", transport)
            transport.abort()


#: Signals sent to the whole process (Ctrl-C, kill, terminal hang-up...). Python runs their
#: handlers in the main thread only.
_PROCESS_SIGNALS = frozenset(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1",
                                       "SIGUSR2", "SIGALRM", "SIGCHLD", "SIGWINCH")
    if hasattr(signal, name))


@contextlib.contextmanager
def process_signals_unblocked() -> Iterator[None]:
    """Let the calling helper thread take process signals while the block runs: for user
    code (a blocking subscriber) run in a thread that blocks them.

    Child processes inherit the mask of the thread that starts them, so a subprocess that a
    subscriber starts would otherwise ignore SIGTERM and SIGINT. The main thread still gets
    a Ctrl-C first (the kernel offers a process signal to the main thread before the
    others). The mask is put back as it was afterwards.
    """
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_UNBLOCK, _PROCESS_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def block_process_signals() -> None:
    """Keep process-directed signals away from the calling (helper) thread.

    The kernel hands a signal sent to the process to any thread that does not block it. If
    that is one of kiwitrio's helper threads, Python's handler runs only once the main thread
    next executes bytecode: a main thread blocked in ``future.result()`` would not see its
    Ctrl-C until the wait ends. Blocked here, the signal goes to the main thread, which is
    interrupted at once. Threads started from this one inherit the mask. No-op where
    ``pthread_sigmask`` does not exist (Windows).
    """
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, _PROCESS_SIGNALS)
