"""The AMQP session: the connection, its channels, and the Session operations on them."""


from __future__ import annotations

import asyncio
import logging
import math
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import aio_pika
import aiormq
import aiormq.exceptions
import pamqp.exceptions
import trio
from pamqp import commands as spec

from ..._bridge import AsyncioBridge, open_bridge
from ..._errors import (
    CommunicatorClosed,
    ConnectionFailed,
    DeliveryFailed,
    InUseError,
    SendOutcomeUnknown,
    UnroutableError,
)
from ..._urls import redact_url
from .._base import (
    Consumer,
    Delivery,
    EntityNotFound,
    ExchangeType,
    NegativeAck,
    OutgoingMessage,
    QueueSpec,
    QueueStats,
    Session,
)
from ._asyncio_side import (
    _close_quietly,
    _Connection,
    _decode_server_properties,
    _FlowEvent,
    _on_underlay,
    _publish_soon,
)
from ._consumer import _AmqpConsumer, _AmqpDelivery
from ._refusals import channel_error, refusal

__all__ = ["open_amqp_session"]

logger = logging.getLogger("kiwitrio.connection")  # a public name (docs/configuration.md#logging)

T = TypeVar("T")

_PERSISTENT = 2
#: A retired publish channel (see _retire_publish_channel) stays open this long, for the
#: confirms of what was published on it before.
_RETIRED_CHANNEL_GRACE = 30.0
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


async def _close_later(channel: aio_pika.abc.AbstractChannel, delay: float) -> None:
    # asyncio side.
    await asyncio.sleep(delay)
    await _close_quietly(channel)


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
            refused = refusal(url, exc)
            if refused is not None:
                raise refused from exc
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

    def _retire_publish_channel(self) -> None:
        """The next publish gets a new channel; this one closes once its confirms are in.

        RabbitMQ 3.10 keeps refusing, on a channel that first published to a quorum queue
        while that queue's leader was failing over, every later message to that queue (seen
        in tests/faults/test_cluster.py: all the replies to one sender, for good, though the
        queue had its new leader within half a second). A new channel is not stuck.
        """
        channel, self._publish_channel = self._publish_channel, None
        if channel is not None:
            self.bridge.start_in_asyncio(_close_later, channel, _RETIRED_CHANNEL_GRACE)

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
        except aiormq.exceptions.AMQPChannelError as exc:
            # The broker closed the channel with its refusal; aiormq may not have marked it
            # closed yet, and the next operation (a queue declared under another name after
            # RESOURCE_LOCKED) would fail on it as if the connection were lost: a new one.
            self._admin_channel = None
            raise channel_error(exc, "the broker refused") from exc
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
        except EntityNotFound:
            return None  # (which also closed the admin channel; it reopens)
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
            # No asyncio task per publish (_publish_soon); returns once confirmed.
            await self.bridge.run_callback(_publish_soon, self._publish_channel, exchange,
                                           routing_key, message.body, properties, mandatory)
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            raise EntityNotFound(f"publishing to {exchange!r}: {exc}") from exc
        except aiormq.exceptions.PublishError as exc:
            raise UnroutableError(
                f"no queue is bound to {routing_key!r} on exchange {exchange!r}") from exc
        except aiormq.exceptions.DeliveryError as exc:
            if isinstance(getattr(exc, "frame", None), spec.Basic.Nack):
                self._retire_publish_channel()
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
            raise channel_error(exc, f"cannot get from {queue!r}") from exc
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
        except aiormq.exceptions.AMQPChannelError as exc:
            raise channel_error(exc, f"cannot consume from {queue!r}") from exc
        except (aiormq.exceptions.AMQPError, ConnectionError,
                aiormq.exceptions.ChannelInvalidStateError) as exc:
            # ChannelInvalidStateError: the channel closed under basic.qos or basic.consume
            # (the connection cut meanwhile). Not an AMQPError: let out as it was, it made a
            # reconnecting session give up instead of trying again.
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


