"""The thread bridge: aio-pika on a private asyncio event loop in a thread of its own.

kiwitrio owns the loop: it is made with ``asyncio.SelectorEventLoop()`` (not through the
event-loop policy, which another library may have replaced), runs in a daemon thread for the
bridge's lifetime, and is closed with it. Nothing process-wide is touched: the policy,
``asyncio.get_event_loop`` and friends, and any loop the host program runs in its own
threads stay as they were. Only public asyncio and Trio APIs are used.

Crossings are batched. Each direction has a queue of plain calls guarded by a lock; the
first call put on an empty queue wakes the other side (``loop.call_soon_threadsafe`` or
``TrioToken.run_sync_soon``), and that side then runs every call queued by the time it gets
there. A burst of deliveries therefore costs one wake-up, not one per message. The queues are
bounded by what can be outstanding: one entry per waiting Trio caller and per unsettled
delivery (the consumers' prefetch windows), plus the close notifications.

Cancellation: a cancelled :meth:`ThreadBridge.run` caller asks the loop to cancel its
asyncio task and keeps waiting, shielded from further cancellation, until that task has
finished; only then does it raise ``trio.Cancelled``. Nothing is left running on behalf of
a caller that has gone. A cancelled :meth:`ThreadBridge.run_callback` caller raises
``trio.Cancelled`` at once: there is no task to cancel, and the report that comes later is
dropped.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import outcome
import trio

from ._base import (
    AsyncioBridge,
    AsyncioOperationAborted,
    abort_open_transports,
    block_process_signals,
    call_in_asyncio,
    describe,
    log_asyncio_error,
    track_socket_transports,
)

__all__ = ["ThreadBridge", "open_thread_bridge"]

logger = logging.getLogger("kiwitrio.bridge")

T = TypeVar("T")

_Call = tuple[Callable[..., object], tuple[Any, ...]]

#: How long the closing loop waits for its cancelled tasks to finish before it gives up on
#: them (an asyncio task that ignores cancellation must not keep the bridge open for ever).
SHUTDOWN_GRACE = 5.0


class ThreadBridge(AsyncioBridge):
    """A private asyncio loop in its own thread; see the module docstring."""

    name = "thread"

    def __init__(self, trio_token: trio.lowlevel.TrioToken) -> None:
        self._trio_token = trio_token
        self.loop: asyncio.AbstractEventLoop | None = None
        self._to_asyncio = _Mailbox()
        self._to_trio = _Mailbox()
        #: run_callback calls not reported yet (loop's thread): bounded by the callers
        #: waiting, and by the publishes a cancelled caller left awaiting their confirm.
        self._unreported: set[_ReportedCall] = set()
        #: Set (in Trio) once the bridge stops taking calls; read by run().
        self._closing = False

    # -- the three crossings ---------------------------------------------------------------

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        if self._closing:
            await trio.lowlevel.checkpoint()
            raise AsyncioOperationAborted(
                f"{describe(fn)} was not started: the asyncio bridge is closing")
        call = _PendingCall(self, fn, args, trio.lowlevel.current_task())
        self._in_asyncio(call.start)
        result: T = await trio.lowlevel.wait_task_rescheduled(call.abort)
        return result

    async def run_callback(self, start: Callable[..., object], *args: Any) -> Any:
        if self._closing:
            await trio.lowlevel.checkpoint()
            raise AsyncioOperationAborted(
                f"{describe(start)} was not started: the asyncio bridge is closing")
        call = _ReportedCall(self, trio.lowlevel.current_task())
        self._in_asyncio(call.start, start, args)
        return await trio.lowlevel.wait_task_rescheduled(call.abort)

    def start_in_asyncio(self, fn: Callable[..., Coroutine[Any, Any, object]],
                         *args: Any) -> None:
        self._in_asyncio(self._create_task, fn, args)

    def call_soon_in_asyncio(self, fn: Callable[..., object], *args: Any) -> None:
        # The same queue as start_in_asyncio's: the two keep their order.
        self._in_asyncio(fn, *args)

    def call_in_trio(self, fn: Callable[..., object], *args: Any) -> None:
        if not self._to_trio.post(fn, args):
            return
        try:
            self._trio_token.run_sync_soon(self._run_trio_batch)
        except trio.RunFinishedError:
            logger.debug("the Trio run has finished; dropped a call to %s", describe(fn))

    # -- queues ----------------------------------------------------------------------------

    def _in_asyncio(self, fn: Callable[..., object], *args: Any) -> None:
        """Queue the plain call ``fn(*args)`` for the loop's thread (from either thread)."""
        loop = self.loop
        assert loop is not None
        if not self._to_asyncio.post(fn, args):
            return
        try:
            loop.call_soon_threadsafe(self._run_asyncio_batch)
        except RuntimeError:  # the loop is closed: the bridge is gone
            logger.debug("the asyncio loop is closed; dropped a call to %s", describe(fn))

    def _run_asyncio_batch(self) -> None:
        # The loop's thread.
        self._to_asyncio.run_batch()

    def _run_trio_batch(self) -> None:
        # The Trio thread, from run_sync_soon: must not raise (that would crash the run).
        self._to_trio.run_batch()

    def _create_task(self, fn: Callable[..., Coroutine[Any, Any, object]],
                     args: tuple[Any, ...]) -> None:
        assert self.loop is not None
        self.loop.create_task(fn(*args))

    # -- the loop's thread -----------------------------------------------------------------

    def _abort_unreported(self) -> None:
        # The loop is done: nothing will report to the run_callback calls still waiting.
        for call in list(self._unreported):
            call.report(outcome.Error(AsyncioOperationAborted(
                "the asyncio bridge closed before the operation reported its outcome")))

    def _thread_main(self, started: trio.Event, finished: trio.Event) -> None:
        try:
            block_process_signals()
            loop = asyncio.SelectorEventLoop()
        except BaseException:
            self.call_in_trio(started.set)
            self.call_in_trio(finished.set)
            raise
        try:
            loop.set_exception_handler(log_asyncio_error)
            transports = track_socket_transports(loop)
            self.loop = loop
            loop.call_soon(self.call_in_trio, started.set)
            loop.run_forever()
            _shut_down(loop, transports)
            self._abort_unreported()
        finally:
            loop.close()
            # Last in the queue: every resumption of a Trio caller runs before it.
            self.call_in_trio(finished.set)


class _Mailbox:
    """Plain calls for one thread, posted from any thread and run there in batches.

    Whoever posts into an empty mailbox wakes its thread; later posts ride along until that
    batch runs. A burst of crossings thus costs one wake-up, not one per call.
    """

    __slots__ = ("_calls", "_lock", "_woken")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: deque[_Call] = deque()
        self._woken = False

    def post(self, fn: Callable[..., object], args: tuple[Any, ...]) -> bool:
        """Adds ``fn(*args)``; True if the caller must now wake the thread to run a batch."""
        with self._lock:
            self._calls.append((fn, args))
            if self._woken:
                return False
            self._woken = True
            return True

    def run_batch(self) -> None:
        """Runs (in the mailbox's thread) every call posted so far; never raises."""
        with self._lock:
            batch, self._calls = self._calls, deque()
            self._woken = False
        _run_all(batch)


class _PendingCall:
    """One :meth:`ThreadBridge.run` call: its asyncio task and its waiting Trio task."""

    __slots__ = ("_args", "_asyncio_task", "_bridge", "_cancel_requested", "_fn",
                 "_raise_cancel", "_trio_task")

    def __init__(self, bridge: ThreadBridge, fn: Callable[..., Awaitable[Any]],
                 args: tuple[Any, ...], trio_task: trio.lowlevel.Task) -> None:
        self._bridge = bridge
        self._fn = fn
        self._args = args
        self._trio_task = trio_task
        self._asyncio_task: asyncio.Task[Any] | None = None
        self._cancel_requested = False
        self._raise_cancel: Callable[[], object] | None = None

    def start(self) -> None:
        # The loop's thread.
        loop = self._bridge.loop
        assert loop is not None
        task = loop.create_task(call_in_asyncio(self._fn, self._args))
        self._asyncio_task = task
        task.add_done_callback(self._finished)

    def abort(self, raise_cancel: Callable[[], object]) -> trio.lowlevel.Abort:
        # The Trio thread. The Trio task stays blocked until the asyncio task has finished;
        # _resume then raises the cancellation through raise_cancel.
        self._raise_cancel = raise_cancel
        self._cancel_requested = True
        self._bridge._in_asyncio(self._cancel)
        return trio.lowlevel.Abort.FAILED

    def _cancel(self) -> None:
        # The loop's thread; queued after start(), so the task exists.
        if self._asyncio_task is not None:
            self._asyncio_task.cancel()

    def _finished(self, task: asyncio.Task[Any]) -> None:
        # The loop's thread: read the task's outcome here, hand it to Trio.
        result: outcome.Outcome[Any] | None
        if task.cancelled():
            result = None
        elif (exc := task.exception()) is not None:
            result = outcome.Error(exc)
        else:
            result = outcome.Value(task.result())
        self._bridge.call_in_trio(self._resume, result)

    def _resume(self, result: outcome.Outcome[Any] | None) -> None:
        # The Trio thread.
        if result is None:
            if self._cancel_requested and self._raise_cancel is not None:
                result = outcome.capture(self._raise_cancel)
            else:
                result = outcome.Error(AsyncioOperationAborted(
                    f"{describe(self._fn)} was cancelled by asyncio "
                    "(its connection or channel closed, or the bridge is closing)"))
        trio.lowlevel.reschedule(self._trio_task, result)


class _ReportedCall:
    """One :meth:`ThreadBridge.run_callback` call: its waiting Trio task, and the report."""

    __slots__ = ("_bridge", "_reported", "_trio_task", "_waiting")

    def __init__(self, bridge: ThreadBridge, trio_task: trio.lowlevel.Task) -> None:
        self._bridge = bridge
        self._trio_task = trio_task
        self._waiting = True  # (Trio thread)
        self._reported = False  # (loop's thread)

    def start(self, fn: Callable[..., object], args: tuple[Any, ...]) -> None:
        # The loop's thread.
        self._bridge._unreported.add(self)
        try:
            fn(self.report, *args)
        except Exception as exc:
            self.report(outcome.Error(exc))

    def report(self, result: outcome.Outcome[Any]) -> None:
        # The loop's thread; the first report counts.
        if self._reported:
            return
        self._reported = True
        self._bridge._unreported.discard(self)
        self._bridge.call_in_trio(self._resume, result)

    def abort(self, _raise_cancel: Callable[[], object]) -> trio.lowlevel.Abort:
        # The Trio thread: stop waiting now; the report, when it comes, finds nobody.
        self._waiting = False
        return trio.lowlevel.Abort.SUCCEEDED

    def _resume(self, result: outcome.Outcome[Any]) -> None:
        # The Trio thread.
        if self._waiting:
            self._waiting = False
            trio.lowlevel.reschedule(self._trio_task, result)


def _run_all(batch: deque[_Call]) -> None:
    for fn, args in batch:
        try:
            fn(*args)
        except Exception:
            logger.exception("error in a call across the asyncio bridge: %s", describe(fn))


def _shut_down(loop: asyncio.AbstractEventLoop,
               transports: Any) -> None:
    """Cancel what still runs on ``loop`` and let it finish; abort leftover sockets."""
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:
        _, pending = loop.run_until_complete(asyncio.wait(tasks, timeout=SHUTDOWN_GRACE))
        for task in pending:
            logger.warning("asyncio task %r did not finish within %.0f s of being cancelled; "
                           "left behind", task, SHUTDOWN_GRACE)
        for task in tasks - pending:
            if not task.cancelled() and task.exception() is not None:
                logger.debug("asyncio task %r ended with %r", task, task.exception())
    loop.run_until_complete(loop.shutdown_asyncgens())
    abort_open_transports(transports)
    # One more turn, so that aborted transports run their connection_lost callbacks.
    loop.run_until_complete(asyncio.sleep(0))


@asynccontextmanager
async def open_thread_bridge() -> AsyncIterator[ThreadBridge]:
    """Start a private asyncio loop in a new thread for the duration of the block.

    Leaving the block (also when cancelled) cancels the asyncio tasks still running, waits
    for them and for the thread to finish, and closes the loop.
    """
    bridge = ThreadBridge(trio.lowlevel.current_trio_token())
    started = trio.Event()
    finished = trio.Event()
    thread = threading.Thread(target=bridge._thread_main, args=(started, finished),
                              name="kiwitrio-asyncio", daemon=True)
    thread.start()
    try:
        with trio.CancelScope(shield=True):
            await started.wait()
        if bridge.loop is None:
            raise RuntimeError("the asyncio bridge's thread failed to start its event loop")
        yield bridge
    finally:
        with trio.CancelScope(shield=True):
            bridge._closing = True
            if bridge.loop is not None:
                bridge._in_asyncio(bridge.loop.stop)
            await finished.wait()
        thread.join()
