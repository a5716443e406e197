"""The blocking Communicator: kiwitrio's core run in a portal thread.

Every method blocks the calling thread until the portal has done its part (for sends: until
the broker confirmed) and raises errors from the call itself. Results come back as
:class:`concurrent.futures.Future` objects. Subscribers are plain functions, called in worker
threads (never the portal thread) with this communicator as first argument, so they may use
the blocking API themselves.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import functools
import threading
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import trio

import kiwitrio
from kiwitrio import BroadcastFilter, CommunicatorClosed, QueueEmpty, QueueType, ResultHandle
from kiwitrio import IncomingTask as CoreIncomingTask
from kiwitrio import TaskQueue as CoreTaskQueue
from kiwitrio.lowlevel import (
    SubscriberKind,
    check_subscriber_signature,
    is_async_callable,
    process_signals_unblocked,
)

from ._operations import Operations
from ._outcomes import fetch_within, keep_until_resolved, outcome_of_block

if TYPE_CHECKING:
    from typing_extensions import Unpack
from ._portal import Portal

__all__ = ["BlockingBase", "Communicator", "IncomingTask", "TaskQueue", "connect"]

#: How long close() waits for the communicator to shut down (giving tasks back) in the portal.
CLOSE_TIMEOUT = 15.0
#: kiwiPy's default wait in next_task().
NEXT_TASK_TIMEOUT = 5.0

_live: weakref.WeakSet[_Runtime] = weakref.WeakSet()


def connect(
    url: str | Sequence[str] = kiwitrio.DEFAULT_URL,
    *,
    portal: Portal | None = None,
    **options: Unpack[kiwitrio.CommunicatorOptions],
) -> Communicator:
    """Connect and return a blocking :class:`Communicator`; use it as a context manager.

    Takes :func:`kiwitrio.open_communicator`'s options (``message_exchange``,
    ``task_exchange``, ``task_queue``, ``task_prefetch_count``, ``encoder``, ``decoder``,
    ``testing_mode``...); ``bridge`` defaults to ``"thread"`` here. Each communicator
    starts its own portal thread unless a :class:`Portal` is given, to share one thread
    between several communicators (the caller then stops the portal after closing them).
    """
    return Communicator(url, portal=portal, **options)


class _Runtime:
    """The part of a communicator that lives in the portal.

    Kept apart from :class:`Communicator` so that nothing in the portal refers to the
    Communicator object itself, which can then be garbage collected (and closed) when the
    program drops it.
    """

    def __init__(self, portal: Portal, owns_portal: bool) -> None:
        self.portal = portal
        self.owns_portal = owns_portal
        self.core: kiwitrio.Communicator | None = None
        self.close_requested: trio.Event | None = None
        self.finished: concurrent.futures.Future[None] | None = None
        self.closed = False
        self._close_lock = threading.Lock()

    def open(self, url: str | Sequence[str], options: kiwitrio.CommunicatorOptions) -> None:
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.finished = self.portal.submit(self._serve, url, options, started)
        try:
            started.result()
        except BaseException:
            self.finished.cancel()
            raise

    async def _serve(self, url: str | Sequence[str], options: kiwitrio.CommunicatorOptions,
                     started: concurrent.futures.Future[None]) -> None:
        self.close_requested = trio.Event()
        try:
            async with kiwitrio.open_communicator(url, **options) as core:
                self.core = core
                started.set_result(None)
                await self.close_requested.wait()
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
                return
            raise
        finally:
            if self.owns_portal and self.closed:
                self.portal.stop()  # from inside: stops the loop once this task is done

    def close(self) -> None:
        with self._close_lock:
            if self.closed:
                return
            self.closed = True
        if not self.portal.is_running():
            return
        if self.close_requested is not None:
            try:
                self.portal.submit(_set_event, self.close_requested)
            except CommunicatorClosed:
                return
        if self.portal.in_portal_thread():
            return  # cannot wait for ourselves; the shutdown goes on in the background
        try:
            if self.finished is not None:
                try:
                    self.finished.result(CLOSE_TIMEOUT)
                except Exception:
                    pass
        finally:
            # Also when interrupted (a KeyboardInterrupt goes on up): stop our thread.
            if self.owns_portal:
                self.portal.stop()


async def _set_event(event: trio.Event) -> None:
    event.set()


@atexit.register
def _close_all_at_exit() -> None:
    for runtime in list(_live):
        runtime.close()


_B = TypeVar("_B", bound="BlockingBase")


class BlockingBase(Operations):
    """What the two blocking faces share: the portal, the core communicator, closing, and
    the operator's calls (inspect, ping, control_shutdown, the queues: :class:`Operations`).

    :class:`Communicator` (kiwitrio's semantics) and
    :class:`~kiwitrio_sync.RmqThreadCommunicator` (kiwiPy's) derive from it.
    """

    def __init__(self, url: str | Sequence[str] = kiwitrio.DEFAULT_URL, *,
                 portal: Portal | None = None,
                 **options: Unpack[kiwitrio.CommunicatorOptions]) -> None:
        # Blocking code often lives in a process that runs asyncio of its own (AiiDA, plumpy):
        # the thread bridge leaves that untouched, whatever else the process imported.
        options.setdefault("bridge", "thread")
        owns_portal = portal is None
        self._runtime = _Runtime(portal or Portal(), owns_portal)
        try:
            self._runtime.open(url, options)
        except BaseException:
            if owns_portal:
                self._runtime.portal.stop()
            raise
        _live.add(self._runtime)

    # -- plumbing -----------------------------------------------------------------------------

    @property
    def _core(self) -> kiwitrio.Communicator:
        core = self._runtime.core
        if self._runtime.closed or core is None or core.is_closed():
            raise CommunicatorClosed("the communicator is closed")
        return core

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        self._runtime.portal.check_usable()
        self._core  # noqa: B018 - raises CommunicatorClosed if closed
        return self._runtime.portal.call(fn, *args)

    def _wrap(self, subscriber: Callable[..., Any], kind: SubscriberKind) -> Callable[..., Any]:
        """Make ``subscriber(self, ...)`` callable by the core (as ``fn(core, ...)``)."""
        if isinstance(subscriber, BroadcastFilter):
            wrapped = subscriber.with_subscriber(self._wrap(subscriber.subscriber, kind))
            subscriber.freeze()  # its filters are now fixed, as in the core
            return wrapped
        if is_async_callable(subscriber):
            raise TypeError(
                "kiwitrio_sync subscribers must be plain functions (they run in worker "
                "threads); use kiwitrio's async Communicator for async subscribers"
            )
        # The core sees only the wrapper below, which takes anything: check the user's own.
        check_subscriber_signature(subscriber, kind)
        this = weakref.ref(self)  # subscribers must not keep the communicator alive

        def call_with_sync_communicator(_core: Any, *args: Any) -> Any:
            communicator = this()
            if communicator is None:
                raise CommunicatorClosed("the communicator was garbage collected")
            # The worker thread blocks process signals (it inherits the portal's mask); the
            # subscriber's own code, and the processes it starts, must not.
            with process_signals_unblocked():
                return subscriber(communicator, *args)

        return call_with_sync_communicator

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop consuming, give unfinished tasks back, close the connection, stop the portal
        thread (if this communicator started it) and join it. Idempotent."""
        self._runtime.close()

    def is_closed(self) -> bool:
        return self._runtime.closed or (
            self._runtime.core is not None and self._runtime.core.is_closed()
        )

    def __enter__(self: _B) -> _B:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        runtime = getattr(self, "_runtime", None)
        if runtime is not None:
            runtime.close()

    @property
    def server_properties(self) -> Mapping[str, Any]:
        return self._core.server_properties

    @property
    def connection_state(self) -> kiwitrio.ConnectionState:
        """See :attr:`kiwitrio.Communicator.connection_state`."""
        core = self._runtime.core
        if self._runtime.closed or core is None:
            return kiwitrio.ConnectionState.CLOSED
        return core.connection_state


class Communicator(BlockingBase):
    """Blocking tasks, RPC and broadcasts with kiwitrio's semantics.

    Made by :func:`connect`. Closed by :meth:`close`, by leaving its ``with`` block, at
    interpreter exit, or when garbage collected; every call after that raises
    :class:`~kiwitrio.CommunicatorClosed`. For kiwiPy's observable behaviour (nested
    futures, ``None`` from ``task_send(no_reply=True)``, kiwiPy's pull mode...) use
    :class:`~kiwitrio_sync.RmqThreadCommunicator`.
    """

    def __init__(self, url: str | Sequence[str] = kiwitrio.DEFAULT_URL, *,
                 portal: Portal | None = None,
                 **options: Unpack[kiwitrio.CommunicatorOptions]) -> None:
        super().__init__(url, portal=portal, **options)
        self._queues: dict[str, TaskQueue] = {}
        self._default_queue = TaskQueue(self, self._core.default_queue)

    # -- tasks --------------------------------------------------------------------------------

    @property
    def default_queue(self) -> TaskQueue:
        """The default task queue; see :attr:`kiwitrio.Communicator.default_queue`."""
        return self._default_queue

    def task_queue(self, queue_name: str, prefetch_size: int = 0, prefetch_count: int = 0,
                   *, queue_type: QueueType | None = None,
                   delivery_limit: int | None = None) -> TaskQueue:
        """The named durable task queue; kiwiPy's signature.

        ``prefetch_count`` 0 means the communicator's ``task_prefetch_count``;
        ``prefetch_size`` is accepted and ignored (RabbitMQ does not implement it);
        ``queue_type`` and ``delivery_limit`` as for :meth:`kiwitrio.Communicator.task_queue`.
        """
        del prefetch_size
        core_queue = self._call(functools.partial(
            self._core.task_queue, queue_name, prefetch_count or None, queue_type=queue_type,
            delivery_limit=delivery_limit))
        return self._queues.setdefault(queue_name, TaskQueue(self, core_queue))

    def task_send(self, task: Any, no_reply: bool = False) -> concurrent.futures.Future[Any]:
        return self._default_queue.task_send(task, no_reply)

    def add_task_subscriber(self, subscriber: Callable[..., Any],
                            identifier: Any = None) -> Any:
        return self._default_queue.add_task_subscriber(subscriber, identifier)

    def remove_task_subscriber(self, identifier: Any) -> None:
        self._default_queue.remove_task_subscriber(identifier)

    # -- RPC ----------------------------------------------------------------------------------

    def add_rpc_subscriber(self, subscriber: Callable[..., Any],
                           identifier: str | None = None) -> str:
        """Answer RPCs to ``identifier`` (a new unique one if ``None``, as in kiwiPy)."""
        if identifier is None:
            identifier = f"rpc-{uuid.uuid4().hex}"
        result: str = self._call(self._core.add_rpc_subscriber, self._wrap(subscriber, "RPC"),
                                 identifier)
        return result

    def remove_rpc_subscriber(self, identifier: str) -> None:
        self._call(self._core.remove_rpc_subscriber, identifier)

    def rpc_send(self, recipient_id: str, msg: Any) -> concurrent.futures.Future[Any]:
        """Send an RPC; raises :class:`~kiwitrio.UnroutableError` at once if nobody listens."""
        future: concurrent.futures.Future[Any] = self._call(
            _send_as_future, self._core.rpc_send, recipient_id, msg
        )
        return future

    # -- broadcasts ---------------------------------------------------------------------------

    def add_broadcast_subscriber(self, subscriber: Callable[..., Any],
                                 identifier: Any = None, *, ordered: bool = False) -> Any:
        """See :meth:`kiwitrio.Communicator.add_broadcast_subscriber` (``ordered``: one
        broadcast at a time, in arrival order)."""
        return self._call(functools.partial(
            self._core.add_broadcast_subscriber, self._wrap(subscriber, "broadcast"),
            identifier, ordered=ordered))

    def remove_broadcast_subscriber(self, identifier: Any) -> None:
        self._call(self._core.remove_broadcast_subscriber, identifier)

    def broadcast_send(self, body: Any, sender: Any = None, subject: Any = None,
                       correlation_id: Any = None) -> bool:
        """Send a broadcast; returns ``True`` once the broker has it (as kiwiPy does)."""
        self._call(self._core.broadcast_send, body, sender, subject, correlation_id)
        return True


async def _send_as_future(send: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
    # Runs in the portal thread: the handle is only touched there.
    handle: ResultHandle = await send(*args)
    return _future_from(handle)


def _future_from(handle: ResultHandle) -> concurrent.futures.Future[Any]:
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()
    keep_until_resolved(handle)

    def transfer(done: ResultHandle) -> None:
        if future.cancelled():
            return
        error = done.exception()
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(done.result())

    handle.add_done_callback(transfer)
    return future


class TaskQueue:
    """A named task queue, blocking flavour (see :class:`kiwitrio.TaskQueue`)."""

    def __init__(self, communicator: Communicator, core: CoreTaskQueue) -> None:
        self._communicator = communicator
        self._queue = core

    @property
    def name(self) -> str:
        return self._queue.name

    def task_send(self, task: Any, no_reply: bool = False) -> concurrent.futures.Future[Any]:
        """Send a task; returns once the broker confirmed it, with a future of its result."""
        future: concurrent.futures.Future[Any] = self._communicator._call(
            _send_as_future, self._queue.task_send, task, no_reply
        )
        return future

    def add_task_subscriber(self, subscriber: Callable[..., Any],
                            identifier: Any = None) -> Any:
        return self._communicator._call(
            self._queue.add_task_subscriber, self._communicator._wrap(subscriber, "task"),
            identifier
        )

    def remove_task_subscriber(self, identifier: Any) -> None:
        self._communicator._call(self._queue.remove_task_subscriber, identifier)

    @contextmanager
    def next_task(self, timeout: float | None = NEXT_TASK_TIMEOUT,
                  fail: bool = True) -> Iterator[IncomingTask | None]:
        """Take the task at the head of the queue, as kiwiPy does.

        An empty queue answers at once: :class:`~kiwitrio.QueueEmpty`, or ``None`` if
        ``fail`` is false. ``timeout`` bounds the exchange with the broker (TimeoutError).
        (The async :meth:`kiwitrio.TaskQueue.next_task` instead *waits* up to its timeout for
        a task to arrive.) On leaving the block the task is finished if
        ``task.process()``'s future was given a result or exception, else requeued.
        """
        try:
            core_task = self._communicator._call(fetch_within, self._queue, timeout)
        except QueueEmpty:
            if fail:
                raise
            yield None
            return
        with self._holding(core_task) as task:
            yield task

    def __iter__(self) -> Iterator[IncomingTask]:
        """The tasks waiting now, one at a time; an unfinished one is requeued on moving on."""
        while True:
            try:
                core_task = self._communicator._call(self._queue.take_task, None)
            except QueueEmpty:
                return
            with self._holding(core_task) as task:
                yield task

    @contextmanager
    def _holding(self, core_task: CoreIncomingTask) -> Iterator[IncomingTask]:
        """The blocking face of a task taken in pull mode, settled when the block ends."""
        task = IncomingTask(self._communicator, core_task)
        try:
            yield task
        finally:
            task._settle()


class IncomingTask:
    """A task taken in pull mode, blocking flavour."""

    def __init__(self, communicator: Communicator, core: CoreIncomingTask) -> None:
        self._communicator = communicator
        self._task = core
        self._future: concurrent.futures.Future[Any] | None = None

    @property
    def body(self) -> Any:
        return self._task.body

    @property
    def redelivered(self) -> bool:
        return self._task.redelivered

    def process(self) -> concurrent.futures.Future[Any]:
        """Start processing; set the returned future's result (or exception) when done."""
        if self._future is None:
            self._future = concurrent.futures.Future()
        return self._future

    @contextmanager
    def processing(self) -> Iterator[concurrent.futures.Future[Any]]:
        """Process in a block; an exception escaping it becomes the task's outcome."""
        try:
            with outcome_of_block(self.process()) as future:
                yield future
        finally:
            self._settle()

    def requeue(self) -> None:
        self._communicator._call(self._task.requeue)

    def _settle(self) -> None:
        if self._task.settled:
            return
        future = self._future
        if future is not None and future.done() and not future.cancelled():
            outcome = self._task.process()
            error = future.exception()
            if error is not None:
                outcome.set_exception(error)
            else:
                outcome.set_result(future.result())
        self._communicator._call(self._task.settle)
