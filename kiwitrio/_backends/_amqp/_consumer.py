"""Deliveries and consumers: a ``basic.consume`` on a channel of its own, handing messages to
the Trio side in a bounded buffer, and settling them."""


from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aio_pika
import aiormq
import aiormq.exceptions
import trio
from aiormq.abc import DeliveredMessage

from .._base import (
    Consumer,
    Delivery,
)
from .._buffer import DeliveryBuffer
from ._settler import ChannelSettler

if TYPE_CHECKING:
    from ._session import _AmqpSession

__all__ = ["_AmqpConsumer", "_AmqpDelivery", "_basic_cancel", "_reject_quietly"]

logger = logging.getLogger("kiwitrio.connection")  # a public name (docs/configuration.md#logging)

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
        await self._settle_now(lambda channel, tag: channel.basic_ack(tag, wait=False), None)

    async def reject(self, *, requeue: bool) -> None:
        await self._settle_now(
            lambda channel, tag: channel.basic_reject(tag, requeue=requeue, wait=False),
            requeue)

    async def _settle_now(self, op: _SettleOp, requeue: bool | None) -> None:
        if self._consumer is None and not self._settled and not self._message.channel.is_closed:
            # A basic.get delivery: wait until the frame is written, so that a basic.get
            # that follows on this channel finds a requeued message back in its queue (the
            # catalogue of kiwitrio/_kinds/_admin.py reads, gives back, and reads again). Not a hot
            # path: consumers' deliveries are settled without the wait.
            self._settled = True
            await self._session.bridge.run(_settle_quietly, op, self._message.channel,
                                           self._message.delivery_tag)
            return
        self._settle(requeue)
        await trio.lowlevel.checkpoint()

    def reject_soon(self, *, requeue: bool) -> None:
        """:meth:`reject` without the checkpoint (Trio side, synchronous)."""
        self._settle(requeue)

    def _settle(self, requeue: bool | None) -> None:
        # A consumer's delivery: ack (requeue None) or reject.
        if self._settled:
            return
        self._settled = True
        consumer = self._consumer
        tag = self._message.delivery_tag
        assert tag is not None
        try:
            if self._message.channel.is_closed:
                logger.warning("could not settle a delivery, the broker requeued it: "
                               "its channel is closed")
            elif consumer is not None:  # (basic.get deliveries are settled in _settle_now)
                # Not waited for: AMQP does not answer acks and rejects. Sparing the Trio
                # side a round trip through asyncio per settle is worth a tenth of the
                # consume rate; the channel's settler writes the settles of a burst together.
                self._session.bridge.call_soon_in_asyncio(consumer.settler.settle, tag,
                                                          requeue)
        finally:
            if consumer is not None:
                consumer.settled_one()


class _AmqpConsumer(Consumer):
    """One ``basic.consume`` on a channel of its own; its state lives on the Trio side."""

    def __init__(self, session: _AmqpSession, queue: str, channel: aio_pika.abc.AbstractChannel,
                 prefetch_count: int, exclusive: bool = False) -> None:
        self._session = session
        self.queue = queue
        self._exclusive = exclusive
        self._channel = channel
        self._buffer = DeliveryBuffer(prefetch_count)
        self.deliveries = self._buffer.deliveries
        self._tag: str | None = None
        self._cancelled = False
        self._unsettled = 0
        #: Used on the asyncio side only; made there, once the channel is open.
        self.settler: ChannelSettler

    def end(self) -> None:
        """End the delivery stream (channel or connection closed). Trio side."""
        self._buffer.end()

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
        self.settler = ChannelSettler(underlay)
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
        self._requeue_buffered()
        if self._unsettled == 0:
            self._session.spawn_close_channel(self._channel)

    async def _on_message(self, message: DeliveredMessage) -> None:
        # asyncio side (aiormq runs this as a task per delivery, in delivery order). The
        # settler learns of the delivery before the Trio side can settle it.
        assert message.delivery_tag is not None
        self.settler.delivered(message.delivery_tag)
        self._session.bridge.call_in_trio(self._deliver, message)

    def _deliver(self, message: DeliveredMessage) -> None:
        # Trio side, synchronous.
        self._unsettled += 1
        if self._cancelled:
            # Arrived after basic.cancel was sent: not ours any more.
            self._give_back(message)
            return
        try:
            self._buffer.put_nowait(_AmqpDelivery(self._session, message, self))
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
        if self._unsettled == 0:
            self._session.spawn_close_channel(self._channel)
        await trio.lowlevel.checkpoint()

    def _requeue_buffered(self) -> None:
        """End the stream; give back the deliveries buffered that nobody received (Trio side)."""
        for delivery in self._buffer.take_back():
            assert isinstance(delivery, _AmqpDelivery)
            delivery.reject_soon(requeue=True)




# -- asyncio side -------------------------------------------------------------------------------


async def _basic_cancel(channel: aio_pika.abc.AbstractChannel, consumer_tag: str) -> None:
    underlay = await channel.get_underlay_channel()
    await underlay.basic_cancel(consumer_tag)


async def _reject_quietly(channel: aiormq.abc.AbstractChannel, delivery_tag: int) -> None:
    try:
        await channel.basic_reject(delivery_tag, requeue=True)
    except (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError,
            ConnectionError):
        pass  # channel gone: the broker requeues it anyway



async def _settle_quietly(op: _SettleOp,
                          channel: aiormq.abc.AbstractChannel, tag: int) -> None:
    try:
        await op(channel, tag)
    except (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError,
            ConnectionError) as exc:
        # The channel is gone, and with it the delivery: the broker requeued it.
        logger.warning("could not settle a delivery, the broker requeued it: %s", exc)


