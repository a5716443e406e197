"""The kiwiPy face: :class:`RmqThreadCommunicator` behaves as kiwiPy 0.9's thread communicator.

Code written against kiwiPy (plumpy, AiiDA) relies on what kiwiPy does, not only on its names.
This face reproduces that over kiwitrio's core, where :class:`~kiwitrio_sync.Communicator` keeps
kiwitrio's own semantics:

- a subscriber that returns a future makes the sender's future resolve to *another* future,
  one level per future in the chain (kiwiPy's "pending" replies; the core sends them for
  subscribers added with ``pending_replies=True``);
- RPC identifiers may be any value; they are turned into strings, as kiwiPy does;
- ``task_send(no_reply=True)`` returns ``None``;
- pull mode as kiwiPy's: a task whose ``process()`` future is alive stays reserved for the
  worker, whenever the future is resolved the task is finished, and a future that is dropped
  unresolved puts the task back; iterating over a queue keeps the tasks it did not process
  reserved until the iteration ends (then puts them back);
- every blocking call waits at most ``async_task_timeout`` seconds (5 by default, as kiwiPy)
  and then raises ``kiwipy.TimeoutError`` saying that the operation may still happen;
- a call that fails because the connection is gone raises :class:`ConnectionLost`, which is
  also aio-pika's ``ConnectionClosed``;
- ``add_close_callback``/``remove_close_callback``; broadcast subscribers see broadcasts one at
  a time, in order.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import threading
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import trio
import trio.testing

import kiwitrio
from kiwitrio import CommunicatorClosed, ConnectionFailed, QueueEmpty, ResultHandle, TaskRejected
from kiwitrio._bridge import block_process_signals
from kiwitrio._communicator import (
    DEFAULT_MESSAGE_EXCHANGE,
    DEFAULT_TASK_EXCHANGE,
    DEFAULT_TASK_QUEUE,
)
from kiwitrio._invoke import SubscriberKind, check_subscriber_signature, is_async_callable
from kiwitrio._tasks import IncomingTask as CoreIncomingTask
from kiwitrio._tasks import TaskQueue as CoreTaskQueue

from ._communicator import BlockingBase, _fetch_within, _unresolved
from ._kiwipy_api import ConnectionLost, InvalidStateError, KiwipyCommunicator, OperationTimeout
from ._portal import BlockingCallInPortal, Portal, settle_future

__all__ = [
    "TASK_FINISHED",
    "TASK_PENDING",
    "TASK_PROCESSING",
    "TASK_REQUEUED",
    "RmqThreadCommunicator",
    "RmqThreadIncomingTask",
    "RmqThreadTaskQueue",
    "connect",
]

logger = logging.getLogger("kiwitrio.sync")  # a public name (docs/configuration.md#logging)

#: kiwiPy's wait for each blocking call (``async_task_timeout``).
TASK_TIMEOUT = 5.0
#: kiwiPy's ``next_task`` timeout.
TASK_FETCH_TIMEOUT = 5.0
#: How long close() waits at most for subscriber calls in progress.
CLOSE_LINGER = 2.0
#: kiwiPy's ``task_prefetch_count=0`` means "no limit"; AMQP's largest prefetch count.
UNLIMITED_PREFETCH = 65535

# The states of a task taken in pull mode, as kiwiPy names them.
TASK_PENDING = "pending"
TASK_PROCESSING = "processing"
TASK_FINISHED = "finished"
TASK_REQUEUED = "requeued"

_NOT_GIVEN: Any = object()


def connect(
    connection_params: str | Mapping[str, Any] | None = None,
    connection_factory: Any = None,
    message_exchange: str = DEFAULT_MESSAGE_EXCHANGE,
    task_exchange: str = DEFAULT_TASK_EXCHANGE,
    task_queue: str = DEFAULT_TASK_QUEUE,
    task_prefetch_size: int = 0,
    task_prefetch_count: int = 0,
    encoder: Any = None,
    decoder: Any = None,
    testing_mode: bool = False,
    async_task_timeout: float | None = TASK_TIMEOUT,
    **options: Any,
) -> RmqThreadCommunicator:
    """kiwiPy's ``kiwipy.rmq.connect``: a connected :class:`RmqThreadCommunicator`."""
    return RmqThreadCommunicator.connect(
        connection_params, connection_factory, message_exchange=message_exchange,
        task_exchange=task_exchange, task_queue=task_queue,
        task_prefetch_size=task_prefetch_size, task_prefetch_count=task_prefetch_count,
        encoder=encoder, decoder=decoder, testing_mode=testing_mode,
        async_task_timeout=async_task_timeout, **options)


class RmqThreadCommunicator(BlockingBase, KiwipyCommunicator):
    """kiwiPy 0.9's ``RmqThreadCommunicator``, observable behaviour included, over kiwitrio.

    Takes kiwiPy's arguments (``connection_params`` a URL, ``{"url": ...}`` or aio-pika's
    ``host``/``port``/``login``/``password``/``virtualhost``) and, as keywords, kiwitrio's
    options (``reconnect``, ``heartbeat``, ``task_lease``, ``portal``...). ``task_prefetch_count``
    0 (kiwiPy's default) means no limit. ``connection_factory``, ``queue_expires`` and
    ``task_prefetch_size`` are accepted and ignored. Each blocking call waits at most
    ``async_task_timeout`` seconds (``None``: no limit) and then raises
    :class:`~kiwitrio_sync.OperationTimeout` (a ``kiwipy.TimeoutError``); the operation is not
    cancelled. See the module docstring and docs/coming-from-kiwipy.md for what differs from
    :class:`~kiwitrio_sync.Communicator`.
    """

    TASK_TIMEOUT = TASK_TIMEOUT

    @classmethod
    def connect(
        cls,
        connection_params: str | Mapping[str, Any] | None = None,
        connection_factory: Any = None,
        message_exchange: str = DEFAULT_MESSAGE_EXCHANGE,
        task_exchange: str = DEFAULT_TASK_EXCHANGE,
        task_queue: str = DEFAULT_TASK_QUEUE,
        task_prefetch_size: int = 0,
        task_prefetch_count: int = 0,
        encoder: Any = None,
        decoder: Any = None,
        testing_mode: bool = False,
        async_task_timeout: float | None = TASK_TIMEOUT,
        *,
        portal: Portal | None = None,
        **options: Any,
    ) -> RmqThreadCommunicator:
        """Connect like kiwiPy: ``connection_params`` is a URL or a mapping."""
        return cls(
            connection_params, connection_factory, message_exchange=message_exchange,
            task_exchange=task_exchange, task_queue=task_queue,
            task_prefetch_size=task_prefetch_size, task_prefetch_count=task_prefetch_count,
            encoder=encoder, decoder=decoder, testing_mode=testing_mode,
            async_task_timeout=async_task_timeout, portal=portal, **options)

    def __init__(
        self,
        connection_params: str | Mapping[str, Any] | None = None,
        connection_factory: Any = None,
        message_exchange: str = DEFAULT_MESSAGE_EXCHANGE,
        queue_expires: Any = None,
        task_exchange: str = DEFAULT_TASK_EXCHANGE,
        task_queue: str = DEFAULT_TASK_QUEUE,
        task_prefetch_size: int = 0,
        task_prefetch_count: int = 0,
        encoder: Any = None,
        decoder: Any = None,
        testing_mode: bool = False,
        async_task_timeout: float | None = TASK_TIMEOUT,
        *,
        portal: Portal | None = None,
        **options: Any,
    ) -> None:
        for name, value in (("connection_factory", connection_factory),
                            ("queue_expires", queue_expires),
                            ("task_prefetch_size", task_prefetch_size or None)):
            if value is not None:
                logger.info("kiwitrio_sync ignores kiwiPy's %s option", name)
        if isinstance(connection_params, Mapping):
            url = _url_from_params(connection_params)
        else:
            url = connection_params or kiwitrio.DEFAULT_URL
        if async_task_timeout is not None and async_task_timeout <= 0:
            raise ValueError(f"async_task_timeout must be positive (or None), "
                             f"not {async_task_timeout}")
        self._timeout = async_task_timeout
        if task_prefetch_count < 0:
            raise ValueError(f"task_prefetch_count must not be negative: {task_prefetch_count}")
        options.update(message_exchange=message_exchange, task_exchange=task_exchange,
                       task_queue=task_queue, testing_mode=testing_mode,
                       task_prefetch_count=task_prefetch_count or UNLIMITED_PREFETCH)
        if encoder is not None:
            options["encoder"] = encoder
        if decoder is not None:
            options["decoder"] = decoder
        self._close_callbacks = _CloseCallbacks()
        self._in_flight = _InFlight()
        user_on_state = options.get("on_connection_state")
        options["on_connection_state"] = functools.partial(
            _connection_state_changed, weakref.ref(self), user_on_state)
        super().__init__(url, portal=portal, **options)
        self._queues: dict[str, RmqThreadTaskQueue] = {}
        self._default_queue = RmqThreadTaskQueue(self, self._core._default_queue)
        finished = self._runtime.finished
        if finished is not None:  # the communicator ending by itself: the connection failed
            finished.add_done_callback(functools.partial(_ended, weakref.ref(self)))
        if "reconnect" in options and options["reconnect"] is None:
            # No reconnection, so no connection states: watch the connection itself.
            self._call(_watch_connection, self._core, weakref.ref(self))

    # -- plumbing -----------------------------------------------------------------------------

    @property
    def _core(self) -> kiwitrio.Communicator:
        core = self._runtime.core
        if self._runtime.closed or core is None:
            raise CommunicatorClosed("the communicator is closed")
        if core.is_closed():
            raise ConnectionLost("the connection to the broker was lost for good; the "
                                 "communicator has closed")
        return core

    def _call(self, fn: Callable[..., Any], *args: Any, timeout: Any = _NOT_GIVEN) -> Any:
        """Run ``await fn(*args)`` in the portal; wait at most ``async_task_timeout``."""
        portal = self._runtime.portal
        portal.check_usable()
        self._core  # noqa: B018 - raises CommunicatorClosed (or ConnectionLost) if closed
        if portal.in_portal_thread():
            raise BlockingCallInPortal(
                "blocking kiwitrio_sync call from the portal thread (a future's callback?): "
                "it would deadlock; run it in another thread")
        limit = self._timeout if timeout is _NOT_GIVEN else timeout
        future = portal.submit(fn, *args)
        try:
            try:
                return future.result(limit)
            except concurrent.futures.TimeoutError:
                if future.done():
                    return future.result()  # it raised a TimeoutError of its own
                raise OperationTimeout(
                    f"{_describe(fn)} did not complete within {limit} s; it was not "
                    "cancelled and may still take effect") from None
        except (ConnectionLost, OperationTimeout):
            raise  # (an OperationTimeout leaves the operation running: not cancelled)
        except ConnectionFailed as exc:
            raise ConnectionLost(str(exc)) from exc
        except CommunicatorClosed as exc:
            if self._runtime.closed:
                raise
            raise ConnectionLost(f"the connection to the broker is gone: {exc}") from exc
        except BaseException:
            future.cancel()  # interrupted (Ctrl-C): nothing goes on for a caller that left
            raise

    def _wrap_kiwipy(self, subscriber: Any, *, kind: SubscriberKind) -> Callable[..., Any]:
        """``subscriber(self, ...)`` for the core, run in a worker thread.

        A returned future is relayed level by level: that keeps the subscriber's own future
        out of the core's hands (the core cancels what it waits for when it shuts down), and
        turns a cancelled task future into TaskRejected, so the task goes back to the queue
        (with kiwiPy it stayed unacknowledged until the connection closed). The call is
        counted while it runs, so that :meth:`close` can let it finish.
        """
        if isinstance(subscriber, kiwitrio.BroadcastFilter):
            if kind != "broadcast":
                raise TypeError("a BroadcastFilter is a broadcast subscriber")
            wrapped_filter = subscriber.with_subscriber(
                self._wrap_kiwipy(subscriber.subscriber, kind=kind))
            subscriber._subscribed = True  # its filters are now fixed, as in the core
            return wrapped_filter
        if is_async_callable(subscriber):
            raise TypeError(
                "kiwitrio_sync subscribers must be plain functions (they run in worker "
                "threads); use kiwitrio's async Communicator for async subscribers")
        # The core sees only the wrapper below, which takes anything: check the user's own.
        check_subscriber_signature(subscriber, kind)
        this = weakref.ref(self)
        on_cancel = _reject_task if kind == "task" else _cancel
        in_flight = self._in_flight

        def call_in_thread(*args: Any) -> Any:
            block_process_signals()  # in a shared Trio worker thread: see _communicator._wrap
            communicator = this()
            if communicator is None:
                raise CommunicatorClosed("the communicator was garbage collected")
            _subscriber_thread.active = True
            try:
                result = subscriber(communicator, *args)
            finally:
                _subscriber_thread.active = False
            if isinstance(result, concurrent.futures.Future):
                return _relay(result, on_cancel)
            return result

        async def call_kiwipy_subscriber(_core: Any, *args: Any) -> Any:
            # In the portal: counted from here, as soon as the core hands the message over.
            with in_flight:
                return await trio.to_thread.run_sync(
                    functools.partial(call_in_thread, *args), abandon_on_cancel=True)

        return call_kiwipy_subscriber

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close: let subscriber calls in progress finish (up to :data:`CLOSE_LINGER`
        seconds, as kiwiPy answered the messages that came while it disconnected), then close
        as :class:`~kiwitrio_sync.Communicator` does; then the close callbacks run (in this
        thread). Idempotent."""
        was_open = not self._runtime.closed
        connected = (self.connection_state in (kiwitrio.ConnectionState.CONNECTED,
                                               kiwitrio.ConnectionState.BLOCKED)
                     and not self._close_callbacks.reported_loss)
        portal = self._runtime.portal
        in_subscriber = getattr(_subscriber_thread, "active", False)
        try:
            if (was_open and connected and not in_subscriber and portal.is_running()
                    and not portal.in_portal_thread()):
                # (Not from a subscriber: that call would wait for itself.)
                try:
                    portal.call(_linger, self._runtime.core, self._in_flight)
                except Exception as exc:
                    logger.debug("could not wait for subscribers before closing: %s", exc)
        finally:
            super().close()  # also when interrupted (Ctrl-C) while waiting
        if was_open and connected:
            self._close_callbacks.fire(self, ConnectionLost("the communicator was closed"))

    def add_close_callback(self, callback: Callable[[Any, BaseException | None], Any],
                           weak: bool = False) -> None:
        """Call ``callback(communicator, exception)`` each time the connection closes.

        That is, when it is lost (the communicator then reconnects, and the callback runs in
        the portal thread, so it must not make blocking calls) and after :meth:`close`
        (in the thread that closed). With ``weak``, the communicator holds the callback
        weakly (a bound method through its object). kiwiPy's aio-pika passed the connection
        as first argument; this passes the communicator.
        """
        self._core  # noqa: B018 - raises CommunicatorClosed if closed, as kiwiPy does
        self._close_callbacks.add(callback, weak)

    def remove_close_callback(self, callback: Callable[[Any, BaseException | None], Any],
                              ) -> None:
        """Remove a close callback; :class:`ValueError` if it was not added."""
        self._close_callbacks.remove(callback)

    @property
    def server_properties(self) -> dict[str, Any]:
        """What the broker said about itself (a ``dict``, as in kiwiPy)."""
        return dict(self._core.server_properties)

    # -- tasks --------------------------------------------------------------------------------

    def task_queue(self, queue_name: str, prefetch_size: int = 0,
                   prefetch_count: int = 0) -> RmqThreadTaskQueue:
        """The named task queue; ``prefetch_count`` 0 takes the communicator's."""
        del prefetch_size
        core = self._core
        core_queue = self._call(core.task_queue, queue_name, prefetch_count or None)
        return self._queues.setdefault(queue_name, RmqThreadTaskQueue(self, core_queue))

    def task_send(self, task: Any, no_reply: bool = False,
                  ) -> concurrent.futures.Future[Any] | None:
        """Send a task; a future of its outcome, or ``None`` with ``no_reply`` (as kiwiPy)."""
        return self._default_queue.task_send(task, no_reply)

    def add_task_subscriber(self, subscriber: Any, identifier: Any = None) -> Any:
        return self._default_queue.add_task_subscriber(subscriber, identifier)

    def remove_task_subscriber(self, identifier: Any) -> None:
        self._default_queue.remove_task_subscriber(identifier)

    # -- RPC ----------------------------------------------------------------------------------

    def add_rpc_subscriber(self, subscriber: Any, identifier: Any = None) -> str:
        """Answer RPCs to ``str(identifier)`` (a new one if ``None``); returns it."""
        core = self._core
        name = f"rpc-{uuid.uuid4().hex}" if identifier is None else str(identifier)
        result: str = self._call(
            functools.partial(core.add_rpc_subscriber, pending_replies=True),
            self._wrap_kiwipy(subscriber, kind="RPC"), name)
        return result

    def remove_rpc_subscriber(self, identifier: Any) -> None:
        core = self._core
        self._call(core.remove_rpc_subscriber, str(identifier))

    def rpc_send(self, recipient_id: Any, msg: Any) -> concurrent.futures.Future[Any]:
        """Call ``str(recipient_id)``; raises ``UnroutableError`` at once if nobody listens."""
        core = self._core
        future: concurrent.futures.Future[Any] = self._call(
            _send_nested, core.rpc_send, str(recipient_id), msg)
        return future

    # -- broadcasts ---------------------------------------------------------------------------

    def add_broadcast_subscriber(self, subscriber: Any, identifier: Any = None) -> Any:
        """Receive broadcasts, one at a time and in order, as with kiwiPy."""
        core = self._core
        wrapped = self._wrap_kiwipy(subscriber, kind="broadcast")
        return self._call(functools.partial(core.add_broadcast_subscriber, ordered=True),
                          wrapped, identifier)

    def remove_broadcast_subscriber(self, identifier: Any) -> None:
        core = self._core
        self._call(core.remove_broadcast_subscriber, identifier)

    def broadcast_send(self, body: Any, sender: Any = None, subject: Any = None,
                       correlation_id: Any = None) -> bool:
        """Send a broadcast; ``True`` once the broker has it."""
        core = self._core
        self._call(core.broadcast_send, body, sender, subject, correlation_id)
        return True


#: Set in a worker thread while it runs one of our subscribers.
_subscriber_thread = threading.local()


class _InFlight:
    """Subscriber calls in progress, counted in the portal."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = trio.Event()
        self._idle.set()

    def __enter__(self) -> None:
        self.count += 1
        if self._idle.is_set():
            self._idle = trio.Event()

    def __exit__(self, *exc_info: object) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()


async def _linger(core: kiwitrio.Communicator | None, in_flight: _InFlight) -> None:
    """Before closing: let the messages that reached us be handled, for a short while."""
    if core is None or core.is_closed():
        return
    with trio.move_on_after(CLOSE_LINGER):
        try:
            # A round trip through the bridge and the broker: deliveries the broker sent
            # before answering are with us when it returns.
            await core._ctx.session.inspect_queue(core._default_queue.name)
        except Exception:
            return
        # Every task has gone as far as it can: a delivery that came is now a counted call.
        await trio.testing.wait_all_tasks_blocked()
        await in_flight.wait_idle()


def _describe(fn: Callable[..., Any]) -> str:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def _connection_state_changed(
    this: weakref.ref[RmqThreadCommunicator],
    user_callback: Callable[[kiwitrio.ConnectionState], None] | None,
    state: kiwitrio.ConnectionState,
) -> None:
    # In the portal thread (the core's on_connection_state).
    if user_callback is not None:
        user_callback(state)
    communicator = this()
    if communicator is None:
        return
    if state is kiwitrio.ConnectionState.RECONNECTING:
        communicator._close_callbacks.fire(
            communicator, ConnectionLost("the connection to the broker was lost; reconnecting"))
    elif state in (kiwitrio.ConnectionState.CONNECTED, kiwitrio.ConnectionState.BLOCKED):
        communicator._close_callbacks.reported_loss = False


async def _watch_connection(core: kiwitrio.Communicator,
                            this: weakref.ref[RmqThreadCommunicator]) -> None:
    async def watch() -> None:
        reason = await core._ctx.session.wait_lost()
        communicator = this()
        if communicator is not None and not communicator._close_callbacks.reported_loss:
            communicator._close_callbacks.fire(communicator, ConnectionLost(
                f"the connection to the broker was lost: {reason}"))

    # In the communicator's nursery: it ends when the communicator closes.
    core._ctx.nursery.start_soon(watch)


def _ended(this: weakref.ref[RmqThreadCommunicator], finished: concurrent.futures.Future[None],
           ) -> None:
    # In the portal thread, when the core's block has ended.
    communicator = this()
    if communicator is None or communicator._runtime.closed or finished.cancelled():
        return
    error = finished.exception()
    if error is not None and not communicator._close_callbacks.reported_loss:
        communicator._close_callbacks.fire(communicator, ConnectionLost(
            f"the connection to the broker was lost for good: {error}"))


class _CloseCallbacks:
    """Callbacks held strongly or weakly, called once each per closing, in order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[tuple[Any, Callable[[], Any]]] = []
        #: The loss of the current connection was reported already (not twice for one).
        self.reported_loss = False

    def add(self, callback: Callable[..., Any], weak: bool) -> None:
        if weak:
            ref: Callable[[], Any] = (weakref.WeakMethod(callback)
                                      if hasattr(callback, "__self__")
                                      else weakref.ref(callback))
        else:
            ref = functools.partial(lambda cb: cb, callback)
        with self._lock:
            self._entries.append((_key(callback), ref))

    def remove(self, callback: Callable[..., Any]) -> None:
        key = _key(callback)
        with self._lock:
            for index, (entry_key, _) in enumerate(self._entries):
                if entry_key == key:
                    del self._entries[index]
                    return
        raise ValueError(f"{callback!r} is not a close callback")

    def fire(self, communicator: Any, exc: BaseException | None) -> None:
        with self._lock:
            self.reported_loss = True
            callbacks = [ref() for _, ref in self._entries]
        for callback in callbacks:
            if callback is None:
                continue
            try:
                callback(communicator, exc)
            except Exception:
                logger.exception("close callback %r raised", callback)


def _key(callback: Callable[..., Any]) -> Any:
    # Bound methods are made anew at each attribute access: compare by object and function.
    owner = getattr(callback, "__self__", None)
    if owner is not None and hasattr(callback, "__func__"):
        return ("method", id(owner), callback.__func__)
    return ("callable", id(callback))


def _reject_task(target: concurrent.futures.Future[Any]) -> None:
    target.set_exception(TaskRejected("the subscriber's future was cancelled"))


def _cancel(target: concurrent.futures.Future[Any]) -> None:
    target.cancel()


def _relay(source: concurrent.futures.Future[Any],
           on_cancel: Callable[[concurrent.futures.Future[Any]], None],
           ) -> concurrent.futures.Future[Any]:
    """A future with ``source``'s outcome; a future among the results is relayed too."""
    target: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def copy(done: concurrent.futures.Future[Any]) -> None:
        try:
            if done.cancelled():
                on_cancel(target)
                return
            error = done.exception()
            if error is not None:
                target.set_exception(error)
                return
            result = done.result()
            if isinstance(result, concurrent.futures.Future):
                result = _relay(result, on_cancel)
            target.set_result(result)
        except concurrent.futures.InvalidStateError:
            pass  # the core gave up waiting (it is closing)

    source.add_done_callback(copy)
    return target


async def _send_nested(send: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
    # In the portal thread: the handle is only touched there.
    handle: ResultHandle = await send(*args)
    return _nested_future_from(handle)


def _nested_future_from(handle: ResultHandle) -> concurrent.futures.Future[Any]:
    """kiwiPy's result shape: each "pending" reply resolves the innermost future so far to
    a new future; the final reply resolves the innermost one."""
    outer: concurrent.futures.Future[Any] = concurrent.futures.Future()
    innermost = [outer]
    _unresolved.add(handle)

    def pending(_: ResultHandle) -> None:
        current = innermost[0]
        nested: concurrent.futures.Future[Any] = concurrent.futures.Future()
        innermost[0] = nested
        settle_future(current, nested, None)

    def transfer(done: ResultHandle) -> None:
        _unresolved.discard(done)
        error = done.exception()
        settle_future(innermost[0], None if error is not None else done.result(), error)

    for _ in range(handle.pending_replies):  # those that came before the send returned
        pending(handle)
    handle.add_pending_callback(pending)
    handle.add_done_callback(transfer)
    return outer


class RmqThreadTaskQueue:
    """A named task queue with kiwiPy's pull mode (``kiwipy.rmq.RmqThreadTaskQueue``)."""

    def __init__(self, communicator: RmqThreadCommunicator, core: CoreTaskQueue) -> None:
        self._communicator = communicator
        self._queue = core
        self._lock = threading.Lock()
        #: Finishing and requeuing started by future callbacks: waited for before the next
        #: fetch, so that a task given back is there to be taken again.
        self._settling: list[concurrent.futures.Future[None]] = []
        #: Tasks being processed: kept alive here until settled, so that dropping an
        #: unresolved outcome future always gives its task back.
        self._reserved: set[RmqThreadIncomingTask] = set()

    @property
    def name(self) -> str:
        return self._queue.name

    def task_send(self, task: Any, no_reply: bool = False,
                  ) -> concurrent.futures.Future[Any] | None:
        """Send a task; a future of its outcome (nested, as kiwiPy's), ``None`` if
        ``no_reply``."""
        comm = self._communicator
        if no_reply:
            comm._call(self._queue.task_send, task, True)
            return None
        future: concurrent.futures.Future[Any] = comm._call(
            _send_nested, self._queue.task_send, task, False)
        return future

    def add_task_subscriber(self, subscriber: Any, identifier: Any = None) -> Any:
        comm = self._communicator
        comm._core  # noqa: B018 - closed first, whatever the subscriber
        return comm._call(
            functools.partial(self._queue.add_task_subscriber, pending_replies=True),
            comm._wrap_kiwipy(subscriber, kind="task"), identifier)

    def remove_task_subscriber(self, identifier: Any) -> None:
        self._communicator._call(self._queue.remove_task_subscriber, identifier)

    @contextmanager
    def next_task(self, timeout: float | None = TASK_FETCH_TIMEOUT,
                  fail: bool = True) -> Iterator[RmqThreadIncomingTask | None]:
        """Take the task at the head of the queue, as kiwiPy does.

        An empty queue raises ``QueueEmpty`` at once (``None`` with ``fail=False``);
        ``timeout`` bounds the exchange with the broker (``kiwipy.TimeoutError``). On leaving
        the block, a task nobody started processing goes back to the queue; one whose
        ``process()`` future is alive stays reserved until that future is resolved (the
        task is then finished) or dropped (it goes back).
        """
        task = self._take(timeout)
        if task is None:
            if fail:
                raise QueueEmpty(f"no task in {self.name!r}")
            yield None
            return
        try:
            yield task
        finally:
            _give_back_if_pending(task)

    def __iter__(self) -> Iterator[RmqThreadIncomingTask]:
        """The tasks in the queue now, each once: those not processed stay reserved until
        the iteration ends, and then go back to the queue (kiwiPy's iteration)."""
        taken: list[RmqThreadIncomingTask] = []
        try:
            while True:
                task = self._take(TASK_FETCH_TIMEOUT)
                if task is None:
                    return
                taken.append(task)
                yield task
        finally:
            for task in taken:
                _give_back_if_pending(task)

    def _take(self, timeout: float | None) -> RmqThreadIncomingTask | None:
        self._wait_settling()
        try:
            core_task = self._communicator._call(_fetch_within, self._queue, timeout,
                                                 timeout=None)
        except trio.TooSlowError:
            raise OperationTimeout(f"fetching a task from {self.name!r} took longer than "
                                   f"{timeout} s") from None
        except QueueEmpty:
            return None
        return RmqThreadIncomingTask(self, core_task)

    def _reserve(self, task: RmqThreadIncomingTask) -> None:
        with self._lock:
            self._reserved.add(task)

    def _release(self, task: RmqThreadIncomingTask) -> None:
        with self._lock:
            self._reserved.discard(task)

    def _start_settling(self, task: RmqThreadIncomingTask, fn: Callable[..., Any],
                        *args: Any) -> None:
        """Run ``fn(*args)`` in the portal without waiting (from any thread)."""
        self._release(task)
        try:
            future = self._communicator._runtime.portal.submit(fn, *args)
        except CommunicatorClosed:
            return  # closing gives every reserved task back anyway
        with self._lock:
            self._settling = [f for f in self._settling if not f.done()]
            self._settling.append(future)

    def _wait_settling(self) -> None:
        with self._lock:
            settling, self._settling = self._settling, []
        if settling:
            concurrent.futures.wait(settling, timeout=self._communicator._timeout)


def _give_back_if_pending(task: RmqThreadIncomingTask) -> None:
    if task.state == TASK_PENDING:
        try:
            task.requeue()
        except CommunicatorClosed:
            pass  # closing gave it back


async def _finish(core: CoreIncomingTask, value: Any, error: BaseException | None) -> None:
    if core.settled:
        return
    outcome = core.process()
    if not outcome.done():
        if error is not None:
            outcome.set_exception(error)
        else:
            outcome.set_result(value)
    await core._settle()


async def _give_back(core: CoreIncomingTask) -> None:
    # The core's outcome is set only by _finish: settling without one requeues.
    await core._settle()


class RmqThreadIncomingTask:
    """A task taken in pull mode, with kiwiPy's states (``kiwipy.rmq.RmqThreadIncomingTask``).

    ``state`` is ``"pending"`` (taken), ``"processing"`` (``process()`` was called),
    ``"finished"`` or ``"requeued"``.
    """

    def __init__(self, queue: RmqThreadTaskQueue, core: CoreIncomingTask) -> None:
        self._queue = queue
        self._task = core
        self._state = TASK_PENDING
        self._lock = threading.Lock()
        self._outcome_ref: weakref.ref[concurrent.futures.Future[Any]] | None = None

    @property
    def body(self) -> Any:
        return self._task.body

    @property
    def no_reply(self) -> bool:
        """True if the sender wants no result."""
        return not self._task._delivery.reply_to

    @property
    def redelivered(self) -> bool:
        return self._task.redelivered

    @property
    def state(self) -> str:
        return self._state

    def process(self) -> concurrent.futures.Future[Any]:
        """Start processing: resolve the returned future (now or later) to finish the task.

        While the future lives the task stays reserved for this worker; dropping it
        unresolved puts the task back in the queue, and so does cancelling it.
        """
        self._begin()
        outcome: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._outcome_ref = weakref.ref(outcome, self._outcome_dropped)
        outcome.add_done_callback(self._outcome_done)
        return outcome

    @contextmanager
    def processing(self) -> Iterator[concurrent.futures.Future[Any]]:
        """Process in a block: resolve the future in it; an exception escaping the block
        becomes the outcome (and goes on up). Unresolved at the end: the task goes back."""
        self._begin()
        outcome: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            yield outcome
        except Exception as exc:
            if not outcome.done():
                outcome.set_exception(exc)
            raise
        finally:
            if outcome.done() and not outcome.cancelled():
                with self._lock:
                    self._state = TASK_FINISHED
                error = outcome.exception()
                value = outcome.result() if error is None else None
                try:
                    self._queue._communicator._call(_finish, self._task, value, error)
                finally:
                    self._queue._release(self)
            else:
                self._requeue_now()

    def requeue(self) -> None:
        """Put the task back in the queue; blocks until it is back."""
        with self._lock:
            if self._state not in (TASK_PENDING, TASK_PROCESSING):
                raise InvalidStateError(f"the task is {self._state}")
        self._requeue_now()

    # -- internals ----------------------------------------------------------------------------

    def _begin(self) -> None:
        with self._lock:
            if self._state != TASK_PENDING:
                raise InvalidStateError(f"the task is {self._state}")
            self._state = TASK_PROCESSING
        self._queue._reserve(self)

    def _requeue_now(self) -> None:
        with self._lock:
            self._state = TASK_REQUEUED
            self._outcome_ref = None
        try:
            self._queue._communicator._call(_give_back, self._task)
        finally:
            self._queue._release(self)

    def _outcome_done(self, outcome: concurrent.futures.Future[Any]) -> None:
        # In whichever thread resolved the future (the portal thread included): no waiting.
        with self._lock:
            if self._state != TASK_PROCESSING:
                return
            self._outcome_ref = None
            if outcome.cancelled():
                self._state = TASK_REQUEUED
                finish: tuple[Any, ...] | None = None
            else:
                self._state = TASK_FINISHED
                error = outcome.exception()
                finish = (outcome.result() if error is None else None, error)
        if finish is None:
            self._queue._start_settling(self, _give_back, self._task)
        else:
            self._queue._start_settling(self, _finish, self._task, *finish)

    def _outcome_dropped(self, ref: weakref.ref[concurrent.futures.Future[Any]]) -> None:
        # The future was garbage collected unresolved: nobody will finish the task.
        with self._lock:
            if self._outcome_ref is not ref or self._state != TASK_PROCESSING:
                return
            self._outcome_ref = None
            self._state = TASK_REQUEUED
        self._queue._start_settling(self, _give_back, self._task)


def _url_from_params(params: Mapping[str, Any]) -> str:
    """An AMQP URL from kiwiPy/aio-pika style connection parameters.

    ``url`` wins; otherwise ``host``, ``port``, ``login`` (or ``username``), ``password`` and
    ``virtualhost`` (aio-pika's names) build one. Unknown keys are refused rather than
    ignored, so that a typo cannot connect somewhere unexpected.
    """
    if "url" in params:
        return str(params["url"])
    known = {"host", "port", "login", "username", "password", "virtualhost", "vhost"}
    unknown = set(params) - known
    if unknown:
        raise ValueError(f"unsupported connection parameters: {sorted(unknown)}")
    user = quote(str(params.get("login", params.get("username", "guest"))), safe="")
    password = quote(str(params.get("password", "guest")), safe="")
    host = params.get("host", "127.0.0.1")
    port = int(params.get("port", 5672))
    vhost = quote(str(params.get("virtualhost", params.get("vhost", "/"))), safe="")
    return f"amqp://{user}:{password}@{host}:{port}/{'' if vhost == '%2F' else vhost}"

