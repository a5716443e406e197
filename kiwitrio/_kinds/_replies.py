"""Results coming back: :class:`ResultHandle` and the reply queue that fills them.

A task or RPC that wants an answer carries ``reply_to`` (this communicator's reply queue:
durable, consumed exclusively) and a fresh ``correlation_id``. The worker publishes a reply
envelope (:mod:`._envelopes`) there, encoded with the communicator's encoder, before it
acknowledges the request. The requester's :class:`ResultHandle` counts intermediate
("pending") replies (:attr:`ResultHandle.pending_replies`) and stays pending until the final
one; kiwitrio_sync's kiwiPy face turns each one into a level of nested futures, as kiwiPy does.
"""

from __future__ import annotations

import collections
import logging
import uuid
import weakref
from collections.abc import Callable, Generator
from typing import Any

import trio

from .._backends import Consumer, Delivery, OutgoingMessage, QueueSpec, drain, is_negative_ack
from .._errors import CommunicatorClosed, DecodeError, DeliveryFailed
from .._ids import new_id
from .._saferepr import describe_error, safe_repr
from ._context import Context
from ._envelopes import is_pending, parse_envelope
from ._nacks import publish_until_taken

__all__ = ["ReplyRouter", "ResultHandle"]

logger = logging.getLogger("kiwitrio.replies")  # a public name (docs/configuration.md#logging)

_REPLY_PREFETCH = 256
#: How many of the latest correlation ids a reply router remembers (see _issued).
_REMEMBERED_IDS = 16_384
#: A reply queue unused (no consumer) this long is deleted by the broker.
REPLY_QUEUE_EXPIRES_MS = 30 * 60 * 1000
#: How long a reply the broker refuses (its queue failing over) is published again. Under
#: the grace a task's reply and acknowledgement have together (_context.SHUTDOWN_GRACE), so
#: that a task whose result was refused throughout can still be given back in it.
REPLY_REFUSED_FOR = 3.0
_MISSING: Any = object()


class ResultHandle:
    """The eventual outcome of :meth:`~kiwitrio.Communicator.task_send` or ``rpc_send``.

    ``await handle`` waits for the result and returns it, or raises
    :class:`~kiwitrio.RemoteException` if the remote subscriber raised, or
    :class:`~kiwitrio.CommunicatorClosed` if this communicator closed first. Awaiting can be
    repeated; cancelling an ``await`` cancels only that wait.

    If the remote subscriber was registered with ``pending_replies=True`` and its outcome was
    a future, "pending" replies come before the final one: :attr:`pending_replies` counts
    them and :meth:`add_pending_callback` is told of each.

    :attr:`replied_by` is the broker-checked login (``user_id``) of whoever sent the reply.
    """

    __slots__ = ("__weakref__", "_callbacks", "_done", "_error", "_event",
                 "_pending_callbacks", "_pending_replies", "_value", "correlation_id",
                 "replied_by")

    def __init__(self, correlation_id: str | None) -> None:
        self.correlation_id = correlation_id
        self._done = False
        # Made when first needed: most handles are awaited only once done, or never, and
        # an Event (with its set of waiters) and two lists were half the memory of each of
        # 10,000 pending tasks.
        self._event: trio.Event | None = None
        self._value: Any = _MISSING
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[ResultHandle], None]] | None = None
        self._pending_replies = 0
        self._pending_callbacks: list[Callable[[ResultHandle], None]] | None = None
        #: The ``user_id`` of the reply that settled this handle (``None``: unset, or not
        #: settled by a reply).
        self.replied_by: str | None = None

    @classmethod
    def completed(cls, value: Any) -> ResultHandle:
        handle = cls(None)
        handle._set(value, None)
        return handle

    def done(self) -> bool:
        return self._done

    def result(self) -> Any:
        """The result now; raises :class:`RuntimeError` if there is none yet."""
        if not self.done():
            raise RuntimeError("the result has not arrived yet")
        if self._error is not None:
            raise self._error
        return self._value

    def exception(self) -> BaseException | None:
        if not self.done():
            raise RuntimeError("the result has not arrived yet")
        return self._error

    def add_done_callback(self, fn: Callable[[ResultHandle], None]) -> None:
        """Call ``fn(handle)`` (in the Trio thread) once done; at once if already done."""
        if self.done():
            fn(self)
        elif self._callbacks is None:
            self._callbacks = [fn]
        else:
            self._callbacks.append(fn)

    @property
    def pending_replies(self) -> int:
        """How many "pending" replies came before the result (see the class docstring)."""
        return self._pending_replies

    def add_pending_callback(self, fn: Callable[[ResultHandle], None]) -> None:
        """Call ``fn(handle)`` (in the Trio thread) for each "pending" reply from now on.

        Those already received are counted by :attr:`pending_replies`; none come once the
        handle is done.
        """
        if self.done():
            return
        if self._pending_callbacks is None:
            self._pending_callbacks = [fn]
        else:
            self._pending_callbacks.append(fn)

    async def wait(self) -> Any:
        """The result (or its exception raised), once it came. Cancellation: only this wait
        is cancelled; the handle stays pending."""
        if self._done:
            await trio.lowlevel.checkpoint()
        else:
            if self._event is None:
                self._event = trio.Event()
            await self._event.wait()
        return self.result()

    def __await__(self) -> Generator[Any, None, Any]:
        return self.wait().__await__()

    def _set(self, value: Any, error: BaseException | None) -> None:
        if self.done():
            return  # a duplicate reply (the request was redelivered): keep the first
        self._value, self._error = value, error
        self._done = True
        if self._event is not None:
            self._event.set()
        self._pending_callbacks = None
        callbacks, self._callbacks = self._callbacks or [], None
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                logger.exception("error in a result callback")

    def _note_pending(self) -> None:
        if self.done():
            return
        self._pending_replies += 1
        for callback in list(self._pending_callbacks or ()):
            try:
                callback(self)
            except Exception:
                logger.exception("error in a pending-reply callback")

    def __repr__(self) -> str:
        state = "pending" if not self.done() else ("error" if self._error else "done")
        return f"<ResultHandle {self.correlation_id} {state}>"


class ReplyRouter:
    """This communicator's reply queue and the handles waiting on it."""

    def __init__(self, ctx: Context, *, prefix: str) -> None:
        self._ctx = ctx
        # Named by us (not by the broker), durable and expiring when unused: it outlives a
        # lost connection, so results sent meanwhile wait in it and pending handles resolve
        # after the reconnection.
        self.queue_name = f"{prefix}.reply.{uuid.uuid4().hex}"
        self._queue: str | None = None
        self._consumer: Consumer | None = None
        self._lock = trio.Lock()
        # Weak: if the caller drops a handle, nobody wants that result any more.
        self._pending: weakref.WeakValueDictionary[str, ResultHandle] = (
            weakref.WeakValueDictionary()
        )
        # The correlation ids handed out lately, to tell a late or duplicate reply (logged
        # at DEBUG) from one this communicator never asked for (WARNING). Bounded.
        self._issued: collections.OrderedDict[str, None] = collections.OrderedDict()
        # Requests answered by many (control requests): each correlation id's answers go to
        # a bounded channel; answers beyond its room are dropped.
        self._collectors: dict[str, trio.MemorySendChannel[Any]] = {}

    async def expect(self) -> tuple[str, ResultHandle]:
        """Register a new pending result; returns (reply queue, handle)."""
        queue = self._queue or await self._open()
        handle = ResultHandle(new_id())
        assert handle.correlation_id is not None
        self._pending[handle.correlation_id] = handle
        self._issued[handle.correlation_id] = None
        if len(self._issued) > _REMEMBERED_IDS:
            self._issued.popitem(last=False)
        return queue, handle

    async def collect(self, limit: int) -> tuple[str, str, trio.MemoryReceiveChannel[Any]]:
        """Register a request that many may answer: returns (reply queue, correlation id,
        the channel its results arrive on, at most ``limit`` of them)."""
        queue = self._queue or await self._open()
        correlation_id = new_id()
        send, receive = trio.open_memory_channel[Any](limit)
        self._collectors[correlation_id] = send
        return queue, correlation_id, receive

    def stop_collecting(self, correlation_id: str) -> None:
        """Later answers to ``correlation_id`` are dropped (at DEBUG)."""
        collector = self._collectors.pop(correlation_id, None)
        if collector is not None:
            collector.close()

    def _collected(self, correlation_id: str | None, value: Any,
                   error: BaseException | None) -> bool:
        """True if ``correlation_id`` belongs to a collector (which got the value, if it
        had room and the answer was no error)."""
        collector = self._collectors.get(correlation_id or "")
        if collector is None:
            return False
        if error is not None:
            logger.info("dropping an answer to control request %s: %s",
                        safe_repr(correlation_id, 80), describe_error(error, 200))
            return True
        try:
            collector.send_nowait(value)
        except trio.WouldBlock:
            logger.debug("dropping an answer to %s: too many", safe_repr(correlation_id, 80))
        return True

    def forget(self, handle: ResultHandle) -> None:
        if handle.correlation_id is not None:
            self._pending.pop(handle.correlation_id, None)

    async def _open(self) -> str:
        async with self._lock:
            if self._queue is None:
                queue = await self._ctx.session.declare_queue(QueueSpec(
                    self.queue_name, durable=True,
                    arguments={**self._ctx.durable.arguments(),
                               "x-expires": REPLY_QUEUE_EXPIRES_MS},
                ))
                # Exclusively: nobody else can consume our replies (and take them away from
                # the handles waiting for them) while we do. See docs/reliability.md, trust.
                consumer = await self._ctx.session.consume(queue, prefetch_count=_REPLY_PREFETCH,
                                                           exclusive=True)
                self._consumer = consumer
                self._ctx.nursery.start_soon(self._route, consumer, name="kiwitrio replies")
                self._queue = queue
            return self._queue

    async def _route(self, consumer: Consumer) -> None:
        async for delivery in drain(consumer.deliveries):
            try:
                await self._resolve(delivery)
            except Exception as exc:
                # Whatever a reply does wrong is that reply's problem: it must not end the
                # routing of the replies behind it (nor the communicator).
                logger.error("rejecting reply %r on %s: %s", delivery.correlation_id,
                             self.queue_name, describe_error(exc))
                await delivery.reject(requeue=False)
                continue
            await delivery.ack()

    async def _resolve(self, delivery: Delivery) -> None:
        trusted = self._ctx.trusted_reply_users
        if trusted is not None and delivery.user_id not in trusted:
            # Not decoded, not resolving anything: the genuine reply may still come.
            logger.warning("dropping a reply on %s for correlation id %s from user %s, who is "
                           "not in trusted_reply_users", self.queue_name,
                           safe_repr(delivery.correlation_id, 80),
                           safe_repr(delivery.user_id, 80))
            return
        # Decode first: a bad reply is reported whether or not anyone waits for it.
        bad = False
        try:
            envelope = await self._ctx.decode(delivery)
            if is_pending(envelope):
                # An intermediate reply: the handle stays registered for the final one.
                waiting = self._pending.get(delivery.correlation_id or "")
                if waiting is not None:
                    waiting._note_pending()
                return
            value, error = parse_envelope(envelope)
        except DecodeError as exc:
            logger.error("rejecting reply %r on %s: %s", delivery.correlation_id,
                         self.queue_name, exc)
            value, error, bad = None, exc, True
        if self._collected(delivery.correlation_id, value, error):
            return
        # Only a reply to a request this communicator sent, and still waits for, resolves
        # anything: the correlation id is looked up, never trusted.
        handle = self._pending.pop(delivery.correlation_id or "", None)
        if handle is None:
            if bad or delivery.correlation_id in self._issued:  # bad: logged already
                logger.debug("reply %r has no waiter (dropped or duplicate)",
                             delivery.correlation_id)
            else:
                logger.warning("dropping a reply on %s for correlation id %s, which this "
                               "communicator did not ask for (or too long ago)",
                               self.queue_name, safe_repr(delivery.correlation_id, 80))
            return
        handle.replied_by = delivery.user_id
        handle._set(value, error)

    async def delete_queue(self) -> None:
        """Delete the reply queue (at close): nothing more can come back."""
        if self._consumer is not None:
            await self._consumer.cancel()
        if self._queue is not None:
            await self._ctx.session.delete_queue(self._queue)

    def close(self) -> None:
        """Fail every pending handle with CommunicatorClosed."""
        pending = list(self._pending.values())
        self._pending.clear()
        for collector in self._collectors.values():
            collector.close()
        self._collectors.clear()
        for handle in pending:
            handle._set(None, CommunicatorClosed("the communicator closed before the reply came"))

    async def send(self, request: Delivery, envelope: dict[str, Any], *,
                   persistent: bool = False, must_store: bool = False) -> None:
        """Publish ``envelope`` as the reply to ``request``, if it asked for one.

        Task results are ``persistent``: the task is acknowledged once the broker confirms
        its result, so the result must survive a broker restart while it waits in the reply
        queue. A result that cannot be encoded (or is too large) is replaced by an error the
        requester sees as a RemoteException. A requester that is gone (its reply queue no
        longer exists) is logged, not an error. A reply the broker refuses (its queue failing
        over to another node) is published again for up to :data:`REPLY_REFUSED_FOR`
        seconds; then, with ``must_store``, the refusal is raised (the caller gives the
        request back instead of acknowledging it), otherwise logged.
        """
        body = self.encode(request, envelope)
        if body is not None:
            await self.send_encoded(request, body, persistent=persistent, must_store=must_store)

    def encode(self, request: Delivery, envelope: dict[str, Any]) -> bytes | None:
        """The body of the reply to ``request``; ``None`` if it asked for none (or not even
        a short error could be encoded)."""
        if not request.reply_to:
            return None
        return self._encode_reply(envelope, request.correlation_id)

    async def send_encoded(self, request: Delivery, body: bytes, *,
                           persistent: bool = False, must_store: bool = False) -> None:
        """Publish the reply ``body`` (from :meth:`encode`) to ``request``; see :meth:`send`."""
        if not request.reply_to:
            return
        message = OutgoingMessage(body, self._ctx.content_type,
                                  correlation_id=request.correlation_id, persistent=persistent)
        try:
            await publish_until_taken(
                self._ctx.session, "", request.reply_to, message, within=REPLY_REFUSED_FOR,
                what=f"the reply to {safe_repr(request.correlation_id, 80)}")
        except DeliveryFailed as exc:
            if must_store and is_negative_ack(exc):
                raise
            logger.info("could not reply to %r: %s", request.correlation_id, exc)

    def _encode_reply(self, envelope: dict[str, Any], correlation_id: str | None) -> bytes | None:
        try:
            return self._ctx.encode(envelope)
        except (TypeError, ValueError) as exc:
            logger.error("cannot send the reply to %r: %s", correlation_id, exc)
            problem = type(exc)(f"the reply could not be sent: {exc}")
            short = {"exception": {"type": type(problem).__qualname__,
                                   "message": str(problem)[:200], "traceback": ""}}
        try:
            return self._ctx.encode(short)
        except (TypeError, ValueError):
            return None  # not even a short error fits: the requester's timeout must do
