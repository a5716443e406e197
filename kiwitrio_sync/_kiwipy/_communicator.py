"""kiwiPy's thread communicator: :func:`connect` and :class:`RmqThreadCommunicator`, closing
and close callbacks, and subscribers wrapped for kiwiPy's semantics."""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import uuid
import weakref
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import trio
import trio.testing

import kiwitrio
from kiwitrio import CommunicatorClosed, ConnectionFailed, QueueType
from kiwitrio.lowlevel import (
    DEFAULT_MESSAGE_EXCHANGE,
    DEFAULT_TASK_EXCHANGE,
    DEFAULT_TASK_QUEUE,
    SubscriberKind,
    check_subscriber_signature,
    is_async_callable,
    process_signals_unblocked,
)

from .._communicator import BlockingBase
from .._portal import BlockingCallInPortal, Portal
from ._api import ConnectionLost, KiwipyCommunicator, OperationTimeout
from ._futures import _cancel, _reject_task, _relay, _send_nested
from ._lifecycle import (
    _CloseCallbacks,
    _connection_state_changed,
    _describe,
    _ended,
    _InFlight,
    _linger,
    _subscriber_thread,
    _watch_connection,
)
from ._tasks import RmqThreadTaskQueue

__all__ = ["TASK_TIMEOUT", "RmqThreadCommunicator", "connect"]

logger = logging.getLogger("kiwitrio.sync")  # a public name (docs/configuration.md#logging)

#: kiwiPy's wait for each blocking call (``async_task_timeout``).
TASK_TIMEOUT = 5.0
#: kiwiPy's ``task_prefetch_count=0`` means "no limit"; AMQP's largest prefetch count.
UNLIMITED_PREFETCH = 65535

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
        self._default_queue = RmqThreadTaskQueue(self, self._core.default_queue)
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
            subscriber.freeze()  # its filters are now fixed, as in the core
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
            communicator = this()
            if communicator is None:
                raise CommunicatorClosed("the communicator was garbage collected")
            _subscriber_thread.active = True
            try:
                with process_signals_unblocked():  # see _communicator._wrap
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

    def task_queue(self, queue_name: str, prefetch_size: int = 0, prefetch_count: int = 0,
                   *, queue_type: QueueType | None = None,
                   delivery_limit: int | None = None) -> RmqThreadTaskQueue:
        """The named task queue; ``prefetch_count`` 0 takes the communicator's;
        ``queue_type`` and ``delivery_limit`` as for :meth:`kiwitrio.Communicator.task_queue`."""
        del prefetch_size
        core = self._core
        core_queue = self._call(functools.partial(
            core.task_queue, queue_name, prefetch_count or None, queue_type=queue_type,
            delivery_limit=delivery_limit))
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

