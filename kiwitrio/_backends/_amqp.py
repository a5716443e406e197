"""The RabbitMQ backend: :class:`~kiwitrio._backend.Session` over aio-pika.

Everything here that touches aio-pika or aiormq runs in asyncio context, reached through the
bridge's three crossings (:mod:`kiwitrio._bridge`): Trio code awaits an asyncio coroutine with
``bridge.run``, starts one without waiting with ``bridge.start_in_asyncio``, and asyncio
callbacks hand data back with ``bridge.call_in_trio``. Which thread each side runs in is the
bridge's business, so no method here touches an asyncio object from Trio code or a Trio object
from asyncio code; each says in a comment which side it runs on. aio-pika sets up the
connection and channels; the per-message hot paths (publish, deliver, ack) use the aiormq
channel underneath to save a wrapper task per message.

Channels: one with publisher confirms for publishing, one for declarations (a failed
declaration closes its channel, so it is reopened on demand), one for ``basic.get``, and one
per consumer, so that each consumer has its own prefetch window and closing one never
requeues another's deliveries.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import aio_pika
import aiormq
import aiormq.exceptions
import pamqp.exceptions
import trio
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec

from .._bridge import AsyncioBridge, open_bridge
from .._errors import (
    CommunicatorClosed,
    ConnectionFailed,
    ConnectionRefusedByBroker,
    DeclarationMismatch,
    DeliveryFailed,
    InUseError,
    SendOutcomeUnknown,
    UnroutableError,
)
from .._urls import redact_url
from ._base import (
    Consumer,
    Delivery,
    EntityNotFound,
    ExchangeType,
    NegativeAck,
    OutgoingMessage,
    QueueInUse,
    QueueSpec,
    QueueStats,
    Session,
)

__all__ = ["open_amqp_session", "redact_url"]

logger = logging.getLogger("kiwitrio.connection")  # a public name (docs/configuration.md#logging)

T = TypeVar("T")

_PERSISTENT = 2
_TRANSIENT = 1


@asynccontextmanager
async def open_amqp_session(url: str, *, heartbeat: float = 30.0, bridge: str = "auto",
                            connect_timeout: float | None = None) -> AsyncIterator[Session]:
    """Connect to the broker at ``url`` for the duration of the block.

    ``bridge`` names the asyncio bridge (see :func:`kiwitrio._bridge.resolve_bridge`). Raises
    :class:`~kiwitrio.ConnectionFailed` (naming the URL without its password) if the broker
    cannot be reached, or has not completed the connection (TCP, TLS, AMQP handshake) within
    ``connect_timeout`` seconds (``None``: no limit).
    """
    async with open_bridge(bridge) as asyncio_bridge:
        # Bounded on the Trio side: a timeout cancels the connect across the bridge. A
        # listener that accepts TCP but never answers would otherwise hang here for good.
        # (A connection that completes just as the time runs out is aborted with the bridge.)
        session: _AmqpSession | None = None
        with trio.move_on_after(math.inf if connect_timeout is None else connect_timeout):
            session = await _AmqpSession.connect(asyncio_bridge, url, heartbeat=heartbeat)
        if session is None:
            raise ConnectionFailed(f"cannot connect to {redact_url(url)}: no answer within "
                                   f"{connect_timeout} s")
        try:
            yield session
        finally:
            with trio.CancelScope(shield=True):
                await session.aclose()


#: basic_ack or basic_reject of a channel, for one delivery tag (called in asyncio context).
_SettleOp = Callable[[aiormq.abc.AbstractChannel, int], Awaitable[None]]


class _AmqpDelivery(Delivery):
    __slots__ = (
        "_consumer",
        "_message",
        "_session",
        "_settled",
        "body",
        "content_type",
        "correlation_id",
        "exchange",
        "headers",
        "redelivered",
        "reply_to",
        "routing_key",
        "user_id",
    )

    def __init__(
        self,
        session: _AmqpSession,
        message: DeliveredMessage,
        consumer: _AmqpConsumer | None,
    ) -> None:
        self._session = session
        self._message = message
        self._consumer = consumer
        self._settled = False
        props = message.header.properties
        self.body = message.body
        self.content_type = props.content_type
        self.correlation_id = props.correlation_id
        self.reply_to = props.reply_to
        self.headers = props.headers or {}
        self.redelivered = bool(message.redelivered)
        self.exchange = message.exchange or ""
        self.routing_key = message.routing_key or ""
        self.user_id = props.user_id

    @property
    def settled(self) -> bool:
        return self._settled

    @property
    def stale(self) -> bool:
        return self._message.channel.is_closed

    async def ack(self) -> None:
        await self._settle_now(lambda channel, tag: channel.basic_ack(tag, wait=False))

    async def reject(self, *, requeue: bool) -> None:
        await self._settle_now(
            lambda channel, tag: channel.basic_reject(tag, requeue=requeue, wait=False))

    async def _settle_now(self, op: _SettleOp) -> None:
        if self._consumer is None and not self._settled and not self._message.channel.is_closed:
            # A basic.get delivery: wait until the frame is written, so that a basic.get
            # that follows on this channel finds a requeued message back in its queue (the
            # catalogue of kiwitrio/_admin.py reads, gives back, and reads again). Not a hot
            # path: consumers' deliveries are settled without the wait.
            self._settled = True
            await self._session.bridge.run(_settle_quietly, op, self._message.channel,
                                           self._message.delivery_tag)
            return
        self._settle(op)
        await trio.lowlevel.checkpoint()

    def reject_soon(self, *, requeue: bool) -> None:
        """:meth:`reject` without the checkpoint (Trio side, synchronous)."""
        self._settle(
            lambda channel, tag: channel.basic_reject(tag, requeue=requeue, wait=False))

    def _settle(self, op: _SettleOp) -> None:
        if self._settled:
            return
        self._settled = True
        channel = self._message.channel
        tag = self._message.delivery_tag
        assert tag is not None
        try:
            if channel.is_closed:
                logger.warning("could not settle a delivery, the broker requeued it: "
                               "its channel is closed")
            else:
                # Nobody waits for the frame: AMQP does not answer acks and rejects, and once
                # the frame is on the channel's write queue it goes out ahead of anything
                # queued later (a channel close included). Sparing the Trio side a round trip
                # through asyncio per settle is worth a tenth of the consume rate.
                self._session.bridge.start_in_asyncio(_settle_quietly, op, channel, tag)
        finally:
            if self._consumer is not None:
                self._consumer.settled_one()


class _AmqpConsumer(Consumer):
    """One ``basic.consume`` on a channel of its own; its state lives on the Trio side."""

    def __init__(self, session: _AmqpSession, queue: str, channel: aio_pika.abc.AbstractChannel,
                 prefetch_count: int, exclusive: bool = False) -> None:
        self._session = session
        self.queue = queue
        self._exclusive = exclusive
        self._channel = channel
        self._send, self.deliveries = trio.open_memory_channel[Delivery](prefetch_count)
        # A second receiving end on the same buffer, used only by cancel() to take back
        # deliveries that nobody received.
        self._reclaim = self.deliveries.clone()
        self._tag: str | None = None
        self._cancelled = False
        self._unsettled = 0

    def end(self) -> None:
        """End the delivery stream (channel or connection closed). Trio side."""
        self._send.close()

    def _on_channel_closed(self, *_args: Any) -> None:
        # asyncio side: a channel closed by the broker (queue deleted, consumer timeout...)
        # ends the stream.
        self._session.bridge.call_in_trio(self.end)

    async def start(self) -> None:
        self._tag = await self._session.bridge.run(self._start_consuming)

    async def _start_consuming(self) -> str:
        # asyncio side.
        self._channel.close_callbacks.add(self._on_channel_closed)
        underlay = await self._channel.get_underlay_channel()
        # The broker cancels a consumer with basic.cancel when its queue is deleted, and from
        # RabbitMQ 4.3 on also when a delivery outlives the consumer timeout (older brokers
        # close the channel instead); the channel stays open. aiormq 7 reports it through
        # this set; aiormq 6 (Python 3.10) has no such hook.
        cancel_callbacks = getattr(underlay, "on_consumer_cancel_callbacks", None)
        if cancel_callbacks is not None:
            cancel_callbacks.add(self._on_broker_cancel)
        result = await underlay.basic_consume(self.queue, self._on_message,
                                              exclusive=self._exclusive)
        assert result.consumer_tag is not None
        return result.consumer_tag

    def _on_broker_cancel(self, _frame: Any) -> None:
        # asyncio side; the channel is this consumer's alone, so the frame is ours.
        self._session.bridge.call_in_trio(self._broker_cancelled)

    def _broker_cancelled(self) -> None:
        # Trio side. Like a channel the broker closed, this ends the stream (a resilient
        # consumer then consumes again); deliveries still out are the broker's again.
        if self._cancelled:
            return
        logger.warning("the broker cancelled the consumer of %r (its queue deleted, or a "
                       "delivery unacknowledged past the consumer timeout)", self.queue)
        self._cancelled = True
        self._send.close()
        self._requeue_buffered()
        if self._unsettled == 0:
            self._session.spawn_close_channel(self._channel)

    async def _on_message(self, message: DeliveredMessage) -> None:
        # asyncio side (aiormq runs this as a task per delivery).
        self._session.bridge.call_in_trio(self._deliver, message)

    def _deliver(self, message: DeliveredMessage) -> None:
        # Trio side, synchronous.
        self._unsettled += 1
        if self._cancelled:
            # Arrived after basic.cancel was sent: not ours any more.
            self._give_back(message)
            return
        try:
            self._send.send_nowait(_AmqpDelivery(self._session, message, self))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            # The stream was ended (the connection closing, at Ctrl-C say) while this
            # delivery was on its way over from asyncio: normal, and the broker has it back
            # once the channel closes; reject it in case the channel outlives us.
            logger.debug("consumer of %r got a delivery after its stream ended; requeued",
                         self.queue)
            self._give_back(message)
        except trio.WouldBlock:
            # The buffer holds a full prefetch window: cannot happen while the broker
            # honours prefetch; requeue rather than drop.
            logger.error("consumer of %r got a delivery beyond its prefetch window", self.queue)
            self._give_back(message)

    def _give_back(self, message: DeliveredMessage) -> None:
        # Trio side.
        assert message.delivery_tag is not None
        self._session.bridge.start_in_asyncio(_reject_quietly, message.channel,
                                              message.delivery_tag)
        self.settled_one()

    def settled_one(self) -> None:
        self._unsettled -= 1
        if self._cancelled and self._unsettled == 0:
            self._session.spawn_close_channel(self._channel)

    async def cancel(self) -> None:
        if self._cancelled:
            await trio.lowlevel.checkpoint()
            return
        self._cancelled = True
        if self._tag is not None and not self._channel.is_closed:
            try:
                await self._session.bridge.run(_basic_cancel, self._channel, self._tag)
            except (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError,
                    ConnectionError):
                pass
        self._requeue_buffered()
        self._send.close()
        self._reclaim.close()
        if self._unsettled == 0:
            self._session.spawn_close_channel(self._channel)
        await trio.lowlevel.checkpoint()

    def _requeue_buffered(self) -> None:
        """Give back the deliveries buffered that nobody received (Trio side)."""
        while True:
            try:
                delivery = self._reclaim.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            assert isinstance(delivery, _AmqpDelivery)
            delivery.reject_soon(requeue=True)


class _AmqpSession(Session):
    def __init__(self, bridge: AsyncioBridge, url: str) -> None:
        self.bridge = bridge
        self.url = url
        self._connection: aio_pika.abc.AbstractConnection
        self._publish_channel: aio_pika.abc.AbstractChannel | None = None
        self._admin_channel: aio_pika.abc.AbstractChannel | None = None
        self._get_channel: aio_pika.abc.AbstractChannel | None = None
        self._consumers: set[_AmqpConsumer] = set()
        self.closed = False
        self._lost = trio.Event()
        self._loss_reason: BaseException = ConnectionFailed("connection lost")
        self.server_properties: Mapping[str, Any] = {}
        #: Stamped as ``user_id`` on every publish; the broker checks it is the login.
        self.login = urllib.parse.unquote(urllib.parse.urlsplit(url).username or "guest")
        self.blocked_reason: str | None = None
        self.on_flow_control: Callable[[], None] | None = None

    @classmethod
    async def connect(cls, bridge: AsyncioBridge, url: str, *, heartbeat: float) -> _AmqpSession:
        session = cls(bridge, url)
        try:
            session._connection, props = await bridge.run(session._connect, heartbeat)
        except (OSError, aiormq.exceptions.AMQPError, ConnectionError,
                pamqp.exceptions.PAMQPException) as exc:
            # (aiormq 6 lets pamqp's AMQPInternalError through for a close at connection.open.)
            refusal = _refusal(url, exc)
            if refusal is not None:
                raise refusal from exc
            raise ConnectionFailed(f"cannot connect to {redact_url(url)}: {exc}") from exc
        session.server_properties = _decode_server_properties(props)
        return session

    async def _connect(self, heartbeat: float,
                       ) -> tuple[aio_pika.abc.AbstractConnection, Mapping[str, Any]]:
        # asyncio side. Heartbeats are negotiated in whole seconds; 0 turns them off.
        connection = await aio_pika.connect(
            self.url, heartbeat=math.ceil(heartbeat) if heartbeat else 0,
            connection_class=_Connection)
        connection.close_callbacks.add(self._on_connection_closed)
        transport = connection.transport
        if transport is not None:
            self._watch_flow_control(transport.connection)
        return connection, (transport.connection.server_properties if transport else {})

    def _watch_flow_control(self, amqp: aiormq.abc.AbstractConnection) -> None:
        # asyncio side. aiormq acts on connection.blocked / unblocked by clearing and setting
        # an asyncio.Event that its writer waits on, and offers no hook, only a log line.
        # That event is an instance attribute looked up at each use (aiormq 6 and 7), so an
        # Event that also tells us takes its place. Found by its name-mangled name; if a
        # future aiormq renames it, blocking goes unseen here (tests/faults/
        # test_flow_control.py notices) but still works.
        unblocked = getattr(amqp, "_Connection__connection_unblocked", None)
        if not isinstance(unblocked, asyncio.Event) or not unblocked.is_set():
            logger.debug("cannot watch aiormq's connection.blocked: not reported")
            return
        reasons: list[str] = []
        # The reason is in the frame only. aiormq 7 looks its handler up per frame, so a
        # wrapper sees it first; aiormq 6 bound its handlers earlier (then no reason).
        handle_blocked = getattr(amqp, "_Connection__handle_connection_blocked", None)
        if handle_blocked is not None:
            async def remember_reason(frame: Any) -> None:
                reasons[:] = [str(getattr(frame, "reason", "") or "")]
                await handle_blocked(frame)

            setattr(amqp, "_Connection__handle_connection_blocked", remember_reason)  # noqa: B010

        def changed(blocked: bool) -> None:
            reason = (reasons[0] if reasons and reasons[0] else "a resource alarm")
            self.bridge.call_in_trio(self._flow_control, reason if blocked else None)

        setattr(amqp, "_Connection__connection_unblocked", _FlowEvent(changed))  # noqa: B010

    def _flow_control(self, reason: str | None) -> None:
        # Trio side. One line per change (aiormq logs its own too).
        if reason == self.blocked_reason:
            return
        if reason is not None:
            logger.warning("the broker at %s blocks publishing (%s): sends wait until it "
                           "lifts the block", redact_url(self.url), reason)
        else:
            logger.warning("the broker at %s unblocked publishing", redact_url(self.url))
        self.blocked_reason = reason
        if self.on_flow_control is not None:
            self.on_flow_control()

    def _on_connection_closed(self, _sender: Any, reason: BaseException | None = None) -> None:
        # asyncio side.
        self.bridge.call_in_trio(self._connection_lost, reason)

    def _connection_lost(self, reason: BaseException | None) -> None:
        # Trio side.
        if not self.closed:
            logger.warning("connection to %s lost: %s", redact_url(self.url), reason)
            self._loss_reason = ConnectionFailed(
                f"connection to {redact_url(self.url)} lost: {reason}")
        for consumer in self._consumers:
            consumer.end()
        self._lost.set()

    async def wait_lost(self) -> BaseException:
        await self._lost.wait()
        return self._loss_reason

    # -- channels ---------------------------------------------------------------------------

    async def _channel(self, current: aio_pika.abc.AbstractChannel | None,
                       *, confirms: bool) -> aio_pika.abc.AbstractChannel:
        self._check_open()
        if current is not None and not current.is_closed:
            return current
        try:
            return await self.bridge.run(
                # (channel number, publisher_confirms, on_return_raises)
                self._connection.channel, None, confirms, confirms
            )
        except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
            raise self._connection_error(exc) from exc

    def spawn_close_channel(self, channel: aio_pika.abc.AbstractChannel) -> None:
        """Close ``channel`` in the background (callable from asyncio or Trio context)."""
        self.bridge.start_in_asyncio(_close_quietly, channel)

    def _check_open(self) -> None:
        if self.closed:
            raise CommunicatorClosed("the connection is closed")

    def _connection_error(self, exc: BaseException) -> ConnectionFailed | CommunicatorClosed:
        if self.closed:
            return CommunicatorClosed("the connection is closed")
        return ConnectionFailed(f"connection to {redact_url(self.url)} failed: {exc}")

    async def _admin_op(self, fn: Callable[[aiormq.abc.AbstractChannel], Awaitable[T]]) -> T:
        """``fn(channel)`` on the declarations channel; ``fn`` runs on the asyncio side."""
        self._admin_channel = await self._channel(self._admin_channel, confirms=False)
        try:
            return await self.bridge.run(_on_underlay, self._admin_channel, fn)
        except aiormq.exceptions.ChannelLockedResource as exc:
            raise QueueInUse(str(exc)) from exc
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            raise EntityNotFound(f"the broker refused: {exc}") from exc
        except aiormq.exceptions.AMQPChannelError as exc:
            raise (declaration_mismatch(str(exc))
                   or DeliveryFailed(f"the broker refused: {exc}")) from exc
        except (aiormq.exceptions.AMQPError, ConnectionError,
                aiormq.exceptions.ChannelInvalidStateError) as exc:
            raise self._connection_error(exc) from exc

    # -- Session ----------------------------------------------------------------------------

    async def declare_exchange(self, name: str, type: ExchangeType, *, durable: bool,
                               auto_delete: bool) -> None:
        await self._admin_op(lambda ch: ch.exchange_declare(
            name, exchange_type=type, durable=durable, auto_delete=auto_delete))

    async def declare_queue(self, spec_: QueueSpec) -> str:
        result = await self._admin_op(lambda ch: ch.queue_declare(
            spec_.name or "", durable=spec_.durable, exclusive=spec_.exclusive,
            auto_delete=spec_.auto_delete, arguments=dict(spec_.arguments)))
        assert result.queue is not None
        return result.queue

    async def delete_queue(self, name: str, *, if_unused: bool = False) -> int:
        try:
            result = await self._admin_op(lambda ch: ch.queue_delete(name, if_unused=if_unused))
        except DeliveryFailed as exc:
            # RabbitMQ's refusal of if_unused is PRECONDITION_FAILED "... in use".
            if if_unused and "in use" in str(exc):
                raise InUseError(f"the queue {name!r} has consumers", kind="queue",
                                 name=name) from exc
            raise
        return result.message_count or 0

    async def purge_queue(self, name: str) -> int:
        result = await self._admin_op(lambda ch: ch.queue_purge(name))
        return result.message_count or 0

    async def inspect_queue(self, name: str) -> QueueStats | None:
        try:
            result = await self._admin_op(lambda ch: ch.queue_declare(name, passive=True))
        except DeliveryFailed:
            return None  # NOT_FOUND (which also closed the admin channel; it reopens)
        return QueueStats(messages=result.message_count or 0,
                          consumers=result.consumer_count or 0)

    async def delete_exchange(self, name: str, *, if_unused: bool = False) -> None:
        await self._admin_op(lambda ch: ch.exchange_delete(name, if_unused=if_unused))

    async def bind_queue(self, queue: str, exchange: str, routing_key: str) -> None:
        await self._admin_op(lambda ch: ch.queue_bind(queue, exchange, routing_key=routing_key))

    async def unbind_queue(self, queue: str, exchange: str, routing_key: str) -> None:
        await self._admin_op(lambda ch: ch.queue_unbind(queue, exchange, routing_key=routing_key))

    async def publish(self, exchange: str, routing_key: str, message: OutgoingMessage, *,
                      mandatory: bool) -> None:
        self._publish_channel = await self._channel(self._publish_channel, confirms=True)
        properties = spec.Basic.Properties(
            content_type=message.content_type,
            delivery_mode=_PERSISTENT if message.persistent else _TRANSIENT,
            correlation_id=message.correlation_id,
            reply_to=message.reply_to,
            user_id=self.login,
            headers=dict(message.headers) if message.headers else None,
            expiration=None if message.expiration_ms is None else str(message.expiration_ms),
        )
        try:
            await self.bridge.run(_publish, self._publish_channel, exchange, routing_key,
                                  message.body, properties, mandatory)
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            raise EntityNotFound(f"publishing to {exchange!r}: {exc}") from exc
        except aiormq.exceptions.PublishError as exc:
            raise UnroutableError(
                f"no queue is bound to {routing_key!r} on exchange {exchange!r}") from exc
        except aiormq.exceptions.DeliveryError as exc:
            if isinstance(getattr(exc, "frame", None), spec.Basic.Nack):
                raise NegativeAck(f"the broker nacked the message: {exc}") from exc
            raise DeliveryFailed(f"the broker did not accept the message: {exc}") from exc
        except aiormq.exceptions.AMQPChannelError as exc:
            raise DeliveryFailed(f"publishing to {exchange!r} failed: {exc}") from exc
        except (aiormq.exceptions.AMQPError, ConnectionError,
                aiormq.exceptions.ChannelInvalidStateError) as exc:
            # The message was handed to the connection: whether it reached the broker is
            # unknown (a blocked connection, for one, sends it when the broker unblocks).
            what = "the communicator closed" if self.closed else "the connection was lost"
            raise SendOutcomeUnknown(
                f"{what} before the broker confirmed the message to {exchange!r} "
                f"(routing key {routing_key!r}): it may or may not have been stored "
                f"({redact_url(self.url)}: {exc})") from exc

    async def get(self, queue: str) -> Delivery | None:
        self._get_channel = await self._channel(self._get_channel, confirms=False)
        try:
            message = await self.bridge.run(
                _on_underlay, self._get_channel, lambda ch: ch.basic_get(queue))
        except aiormq.exceptions.AMQPChannelError as exc:
            raise DeliveryFailed(f"cannot get from {queue!r}: {exc}") from exc
        except (aiormq.exceptions.AMQPError, ConnectionError,
                aiormq.exceptions.ChannelInvalidStateError) as exc:
            raise self._connection_error(exc) from exc
        if isinstance(message.delivery, spec.Basic.GetEmpty):
            return None
        return _AmqpDelivery(self, message, None)

    async def consume(self, queue: str, *, prefetch_count: int,
                      exclusive: bool = False) -> Consumer:
        channel = await self._channel(None, confirms=False)
        consumer = _AmqpConsumer(self, queue, channel, prefetch_count, exclusive)
        try:
            await self.bridge.run(channel.set_qos, prefetch_count)
            await consumer.start()
        except aiormq.exceptions.ChannelLockedResource as exc:
            raise QueueInUse(str(exc)) from exc
        except aiormq.exceptions.AMQPChannelError as exc:
            raise DeliveryFailed(f"cannot consume from {queue!r}: {exc}") from exc
        except (aiormq.exceptions.AMQPError, ConnectionError) as exc:
            raise self._connection_error(exc) from exc
        self._consumers.add(consumer)
        return consumer

    async def aclose(self) -> None:
        if self.closed:
            await trio.lowlevel.checkpoint()
            return
        self.closed = True
        for consumer in self._consumers:
            consumer.end()
        # Closing the connection requeues every unsettled delivery at the broker.
        try:
            await self.bridge.run(self._connection.close)
        except Exception as exc:
            logger.debug("error while closing the connection: %r", exc)


_INEQUIVALENT = re.compile(
    r"inequivalent arg '(?P<argument>[^']*)' for (?P<kind>queue|exchange) '(?P<name>.*)' "
    r"in vhost '(?P<vhost>.*)': received (?P<received>.*) but current is (?P<current>.*)$",
    re.DOTALL)
#: Arguments that testing_mode sets (auto-delete exchanges, expiring queues).
_TESTING_MODE_ARGUMENTS = frozenset({"auto_delete", "x-expires"})


def declaration_mismatch(text: str) -> DeclarationMismatch | None:
    """RabbitMQ's "inequivalent arg" refusal of a declaration, with the likely cause."""
    match = _INEQUIVALENT.search(text)
    if match is None:
        return None
    argument, kind, name = match["argument"], match["kind"], match["name"]
    if argument == "x-queue-type":
        hint = ("the queue exists with another queue type (classic, quorum, stream): use "
                "the same type, or delete the queue (kiwitrio delete QUEUE) to change it")
    elif argument in _TESTING_MODE_ARGUMENTS:
        hint = ("if one side runs with testing_mode (auto-delete exchanges, expiring queues; "
                "the CLI's --testing) and the other does not, use the same testing_mode")
    else:
        hint = (f"declare it the same way everywhere, or delete the {kind} to change it: "
                "the broker never changes the arguments of an existing one")
    return DeclarationMismatch(
        f"the {kind} {name!r} exists with other settings: {argument!r} is "
        f"{match['current']} on the broker but {match['received']} here; {hint}",
        kind=kind, name=name, argument=argument)


def _refusal(url: str, exc: BaseException) -> ConnectionRefusedByBroker | None:
    """The broker's refusal of the login or the vhost, said plainly; None for other errors."""
    parts = urllib.parse.urlsplit(url)
    user = urllib.parse.unquote(parts.username or "guest")
    vhost = urllib.parse.unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    where = f"the broker at {redact_url(url)} (vhost {vhost!r})"
    if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError):
        hint = (" (RabbitMQ lets guest log in only from localhost)"
                if user == "guest" and parts.hostname not in ("localhost", "127.0.0.1", "::1")
                else "")
        return ConnectionRefusedByBroker(
            f"{where} refused the login of user {user!r}: check the user name and "
            f"password{hint}")
    if _closed_at_open(exc):
        # RabbitMQ answers connection.open with connection.close (530 NOT_ALLOWED) when the
        # vhost does not exist and when the user has no permissions on it. aiormq 7 keeps
        # only the frame's repr, so the two cannot be told apart here.
        return ConnectionRefusedByBroker(
            f"{where} refused to open the vhost for user {user!r}: the vhost does not exist "
            f"(create it with rabbitmqctl add_vhost {vhost}) or the user may not use it "
            f"(rabbitmqctl set_permissions -p {vhost} {user} '.*' '.*' '.*')")
    return None


def _closed_at_open(exc: BaseException) -> bool:
    if isinstance(exc, aiormq.exceptions.ConnectionClosed):
        # aiormq raises this with the close frame's code when it reads it as an answer.
        return bool(exc.args) and exc.args[0] == 530
    # aiormq 6: AMQPInternalError("Connection.OpenOk", <the close frame>).
    for arg in exc.args:
        if isinstance(arg, spec.Connection.Close):
            return arg.reply_code == 530
    # aiormq 7: the close frame came where connection.open-ok was expected.
    text = str(exc)
    return (isinstance(exc, aiormq.exceptions.InvalidFrameError)
            and "Connection.OpenOk" in text and "Connection.Close" in text)


# -- asyncio side --------------------------------------------------------------------------------

class _FlowEvent(asyncio.Event):
    """aiormq's "connection unblocked" event, telling ``changed(blocked)`` of each change."""

    def __init__(self, changed: Callable[[bool], None]) -> None:
        super().__init__()
        super().set()  # replaces an event that was set: the connection is not blocked
        self._changed = changed

    def set(self) -> None:
        if not self.is_set():
            super().set()
            self._changed(False)

    def clear(self) -> None:
        if self.is_set():
            super().clear()
            self._changed(True)


class _Connection(aio_pika.Connection):
    """aio-pika's connection, safe to garbage-collect in any thread.

    aio-pika's ``__del__`` closes an unclosed connection with ``ensure_future(self.close())``
    on the collecting thread's loop. kiwitrio closes every connection it got; the ones left
    unclosed are those abandoned mid-connect (an attempt that timed out), and those may be
    collected in the Trio thread, where that makes a ``close()`` coroutine that never runs
    (a RuntimeWarning). Here whatever such a connection holds is closed on its own loop.
    """

    def __del__(self) -> None:
        transport = getattr(self, "transport", None)
        if transport is None:
            return  # never connected, or closed: nothing to release
        try:
            self.loop.call_soon_threadsafe(_close_abandoned, transport)
        except RuntimeError:
            pass  # the loop is closed: the bridge aborted its sockets already


#: The closing of abandoned connections, referenced while they run (asyncio keeps weak ones).
_closing_abandoned: set[asyncio.Task[Any]] = set()


def _close_abandoned(transport: aio_pika.abc.UnderlayConnection) -> None:
    task = asyncio.ensure_future(transport.close(None))
    _closing_abandoned.add(task)
    task.add_done_callback(_closing_abandoned.discard)


async def _on_underlay(channel: aio_pika.abc.AbstractChannel,
                       fn: Callable[[aiormq.abc.AbstractChannel], Awaitable[T]]) -> T:
    return await fn(await channel.get_underlay_channel())


async def _basic_cancel(channel: aio_pika.abc.AbstractChannel, consumer_tag: str) -> None:
    underlay = await channel.get_underlay_channel()
    await underlay.basic_cancel(consumer_tag)


async def _reject_quietly(channel: aiormq.abc.AbstractChannel, delivery_tag: int) -> None:
    try:
        await channel.basic_reject(delivery_tag, requeue=True)
    except (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError,
            ConnectionError):
        pass  # channel gone: the broker requeues it anyway


async def _publish(channel: aio_pika.abc.AbstractChannel, exchange: str, routing_key: str,
                   body: bytes, properties: spec.Basic.Properties, mandatory: bool) -> None:
    underlay = await channel.get_underlay_channel()
    await underlay.basic_publish(body, exchange=exchange, routing_key=routing_key,
                                 properties=properties, mandatory=mandatory)


async def _settle_quietly(op: _SettleOp,
                          channel: aiormq.abc.AbstractChannel, tag: int) -> None:
    try:
        await op(channel, tag)
    except (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError,
            ConnectionError) as exc:
        # The channel is gone, and with it the delivery: the broker requeued it.
        logger.warning("could not settle a delivery, the broker requeued it: %s", exc)


async def _close_quietly(channel: aio_pika.abc.AbstractChannel) -> None:
    if channel.is_closed:
        return
    try:
        await channel.close()
    except Exception as exc:
        logger.debug("error while closing a channel: %r", exc)


def _decode_server_properties(props: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value.decode() if isinstance(value, bytes) else value
            for key, value in props.items()}
