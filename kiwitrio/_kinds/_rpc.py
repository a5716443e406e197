"""RPC: one-to-one calls to a live, named recipient.

Each RPC subscriber owns an exclusive, auto-deleting queue named
``<message exchange>.rpc.<identifier>``; calls go through the default exchange straight to
that queue with ``mandatory`` set. So a call to an identifier nobody subscribes to comes back
from the broker as unroutable at once (:class:`~kiwitrio.UnroutableError`), and the
exclusivity makes an identifier unique across every communicator on the broker.

A call can also come back as a negative publisher confirm (a nack: no queue took it):
RabbitMQ 4 still routes to a queue that is being deleted, and, with Khepri, keeps the
exclusive queues of a node that died until the node is back or forgotten, so the name of a
subscriber that was on that node stays held by a queue nobody consumes. Such a subscriber
comes back on its new connection under the first free one of a few fixed names instead
(``<queue>.1``, ``<queue>.2``..., given by the reconnecting session). A call that its own
queue refuses, or that is unroutable there, therefore tries those names in turn, up to the
first that does not exist. Where none took it: :class:`~kiwitrio.UnroutableError` if its own
queue is gone too, otherwise the broker's refusal (:class:`~kiwitrio.DeliveryFailed`).
Identifiers stay unique as long as no communicator claims one while its owner is cut off
and its old queue still holds the name; then both may answer its calls.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from .. import _metrics, _tracing
from .._backends import (
    RENAMES,
    Consumer,
    Delivery,
    OutgoingMessage,
    QueueInUse,
    QueueSpec,
    is_negative_ack,
    names_in_place_of,
)
from .._errors import DecodeError, DeliveryFailed, DuplicateSubscriberIdentifier, UnroutableError
from . import _pipeline as pipeline
from ._context import Context, handling
from ._envelopes import exception_envelope, pending_envelope, result_envelope
from ._invoke import call_subscriber, check_subscriber_signature
from ._replies import ReplyRouter, ResultHandle

__all__ = ["RpcHub", "RpcSubscriber"]

logger = logging.getLogger("kiwitrio.rpc")  # a public name (docs/configuration.md#logging)

RpcSubscriber = Callable[[Any, Any], Any]

#: Calls handled concurrently by one RPC subscriber.
RPC_PREFETCH = 32
#: AMQP's limit, less room for the suffix of the names taken in place of a held one.
_MAX_QUEUE_NAME_BYTES = 255 - len(f".{RENAMES}")
#: After a refused call: how often, and how far apart (s), to look for the recipient's queue
#: before deciding that it still exists. A queue being deleted is gone at once (RabbitMQ 4.3,
#: every time it was checked), so the wait only ever delays an error that is not about routing.
_GONE_CHECKS = 3
_GONE_CHECK_INTERVAL = 0.02


@dataclass
class _Registration:
    subscriber: RpcSubscriber
    consumer: Consumer
    #: Send a "pending" reply each time the subscriber's outcome is a future.
    pending_replies: bool = False


class RpcHub:
    """The RPC subscribers of one communicator, and sending calls."""

    def __init__(self, ctx: Context, replies: ReplyRouter, *, exchange: str) -> None:
        self._ctx = ctx
        self._replies = replies
        self._prefix = f"{exchange}.rpc."
        self._registrations: dict[str, _Registration] = {}

    def queue_name(self, identifier: str) -> str:
        if not isinstance(identifier, str) or not identifier:
            raise TypeError(f"an RPC identifier must be a non-empty str, not {identifier!r}")
        name = self._prefix + identifier
        if len(name.encode()) > _MAX_QUEUE_NAME_BYTES:
            raise ValueError(f"RPC identifier {identifier!r:.50} is too long")
        return name

    def identifiers(self) -> list[str]:
        return list(self._registrations)

    async def add(self, subscriber: RpcSubscriber, identifier: str, *,
                  pending_replies: bool = False) -> str:
        self._ctx.check_open()
        check_subscriber_signature(subscriber, "RPC")
        queue = self.queue_name(identifier)
        if identifier in self._registrations:
            raise DuplicateSubscriberIdentifier(f"RPC subscriber {identifier!r} exists")
        session = self._ctx.session
        try:
            await session.declare_queue(QueueSpec(queue, exclusive=True, auto_delete=True,
                                                  renamable=True))
            consumer = await session.consume(queue, prefetch_count=RPC_PREFETCH)
        except QueueInUse as exc:
            raise DuplicateSubscriberIdentifier(
                f"RPC identifier {identifier!r} is taken by another communicator"
            ) from exc
        self._registrations[identifier] = _Registration(subscriber, consumer, pending_replies)
        self._ctx.nursery.start_soon(self._serve, identifier, consumer,
                                     name=f"kiwitrio rpc {identifier}")
        return identifier

    async def remove(self, identifier: str) -> None:
        self._ctx.check_open()
        registration = self._registrations.pop(identifier, None)
        if registration is None:
            raise ValueError(f"no RPC subscriber {identifier!r}")
        # Cancelling the only consumer deletes the auto-delete queue, so later calls are
        # unroutable. Calls already being handled finish and are answered.
        await registration.consumer.cancel()

    async def send(self, recipient_id: str, msg: Any) -> ResultHandle:
        self._ctx.check_open()
        queue = self.queue_name(recipient_id)
        body = self._ctx.encode(msg)
        reply_to, handle = await self._replies.expect()
        started = _metrics.now()
        try:
            with _tracing.sending("rpc", recipient_id, destination=queue, routing_key=queue,
                                  conversation_id=handle.correlation_id) as headers:
                message = OutgoingMessage(body, self._ctx.content_type, headers=headers,
                                          correlation_id=handle.correlation_id,
                                          reply_to=reply_to)
                await self._deliver(recipient_id, queue, message)
        except BaseException:
            self._replies.forget(handle)
            raise
        _metrics.record_sent("rpc", started)
        return handle

    async def _deliver(self, recipient_id: str, queue: str, message: OutgoingMessage) -> None:
        """Publish a call to the recipient's queue, or to one it took in place of its own
        (see the module docstring). UnroutableError where nobody subscribes."""
        publish = functools.partial(self._ctx.session.publish, "", message=message,
                                    mandatory=True)
        refusal = await self._try_publish(publish, queue)
        if refusal is None:
            return
        first = refusal
        for name in names_in_place_of(queue):
            refusal = await self._try_publish(publish, name)
            if refusal is None:
                return
            if isinstance(refusal, UnroutableError):
                break  # the names are taken in order: none further on
        if isinstance(first, UnroutableError) and isinstance(refusal, UnroutableError):
            raise UnroutableError(f"nobody subscribes to RPC identifier {recipient_id!r}")
        # Refused where its own queue is: if that is gone, it was being deleted.
        if await self._queue_gone(queue):
            raise UnroutableError(
                f"nobody subscribes to RPC identifier {recipient_id!r} (the broker refused "
                f"the call while its queue was being deleted: {first})") from first
        raise DeliveryFailed(
            f"the broker refused the call to RPC identifier {recipient_id!r}: its queue exists "
            f"but did not take it (being deleted, or left behind by a node that died, with "
            f"nobody in its place): {first}") from first

    @staticmethod
    async def _try_publish(publish: Callable[..., Awaitable[None]],
                           queue: str) -> DeliveryFailed | None:
        """None if ``queue`` took the call; else why not: unroutable (no such queue) or a
        nack (a queue that did not take it). Other errors propagate."""
        try:
            await publish(routing_key=queue)
        except UnroutableError as exc:
            return exc
        except DeliveryFailed as exc:
            if not is_negative_ack(exc):
                raise
            return exc
        return None

    async def _queue_gone(self, queue: str) -> bool:
        """True if ``queue`` does not exist; False if it does or if that cannot be told."""
        for attempt in range(_GONE_CHECKS):
            if attempt:
                await trio.sleep(_GONE_CHECK_INTERVAL)
            try:
                stats = await self._ctx.session.inspect_queue(queue)
            except QueueInUse:  # exclusive to another connection: it exists
                return False
            except Exception as exc:
                logger.debug("could not check whether RPC queue %r exists: %r", queue, exc)
                return False
            else:
                if stats is None:
                    return True
        return False

    async def _serve(self, identifier: str, consumer: Consumer) -> None:
        what = f"RPC to {identifier!r}"

        async def undecodable(delivery: Delivery, exc: DecodeError) -> None:
            await self._replies.send(delivery, exception_envelope(exc))
            await self._ctx.reject_visibly(delivery, what, exc)

        await pipeline.serve(self._ctx, consumer, what,
                             functools.partial(self._handle, identifier), undecodable)

    async def _handle(self, identifier: str, delivery: Delivery, msg: Any) -> None:
        registration = self._registrations.get(identifier)
        if registration is None:  # removed meanwhile
            await self._ctx.give_back(delivery)
            return
        async def tell_pending() -> None:
            await self._replies.send(delivery, pending_envelope())

        started = _metrics.now()
        try:
            with handling(delivery), _tracing.processing(
                    "rpc", identifier, destination=delivery.routing_key,  # our queue
                    headers=delivery.headers, conversation_id=delivery.correlation_id):
                result = await call_subscriber(
                    registration.subscriber, self._ctx.communicator, msg,
                    on_pending=tell_pending if registration.pending_replies else None)
        except trio.Cancelled:
            await self._ctx.give_back(delivery)
            raise
        except Exception as exc:
            envelope = exception_envelope(exc)
            _metrics.record_handled("rpc", "failed", started)
        else:
            envelope = result_envelope(result)
            _metrics.record_handled("rpc", "done", started)
        await self._ctx.finish(delivery, self._replies.send(delivery, envelope))
