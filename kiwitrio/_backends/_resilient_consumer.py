"""The consumers of a :class:`~._reconnect.ResilientSession`: each is one consumer for the
communicator, consuming again on every new connection (and when the broker stopped it while
the connection lives on), whose stream drops the deliveries of a lost connection."""

from __future__ import annotations

import logging
from typing import Protocol

import trio

from .._errors import CommunicatorClosed, ConnectionFailed, DeliveryFailed
from ._base import Consumer, Delivery, QueueInUse, Session, drain
from ._buffer import DeliveryBuffer

__all__ = ["ConsumerHost", "ResilientConsumer"]

# The reconnecting session's logger: these lines are about its consumers.
logger = logging.getLogger("kiwitrio.reconnect")


class ConsumerHost(Protocol):
    """What a resilient consumer needs from the session it belongs to."""

    nursery: trio.Nursery

    def on_broker(self, queue: str) -> str: ...

    def is_current(self, inner: Session) -> bool: ...

    def forget_consumer(self, consumer: ResilientConsumer) -> None: ...


class _FreshDeliveries:
    """A consumer's stream, minus deliveries whose connection is gone (they were requeued)."""

    def __init__(self, receive: trio.MemoryReceiveChannel[Delivery]) -> None:
        self._receive = receive

    async def receive(self) -> Delivery:
        while True:
            delivery = await self._receive.receive()
            if not delivery.stale:
                return delivery

    def receive_nowait(self) -> Delivery:
        while True:
            delivery = self._receive.receive_nowait()
            if not delivery.stale:
                return delivery

    def __aiter__(self) -> _FreshDeliveries:
        return self

    async def __anext__(self) -> Delivery:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None


class ResilientConsumer(Consumer):
    """One consumer for the communicator, re-established on every new connection."""

    def __init__(self, session: ConsumerHost, queue: str, prefetch_count: int,
                 exclusive: bool = False) -> None:
        self._session = session
        self.queue = queue
        self._prefetch_count = prefetch_count
        # Exclusive again on every connection (the broker forgets with the old one).
        self._exclusive = exclusive
        self._buffer = DeliveryBuffer(prefetch_count)
        self.deliveries = _FreshDeliveries(self._buffer.deliveries)
        self._inner: Consumer | None = None
        self._cancelled = False

    async def attach(self, inner_session: Session) -> None:
        inner = await inner_session.consume(self._session.on_broker(self.queue),
                                            prefetch_count=self._prefetch_count,
                                            exclusive=self._exclusive)
        self._inner = inner
        self._session.nursery.start_soon(self._pump, inner_session, inner)

    async def _pump(self, inner_session: Session, inner: Consumer) -> None:
        # Ends when the inner consumer's stream ends: cancelled by us, its connection lost
        # (the supervisor attaches a new one), or its channel closed by the broker.
        async for delivery in drain(inner.deliveries):
            try:
                try:
                    self._buffer.put_nowait(delivery)
                except trio.WouldBlock:
                    await self._buffer.put(delivery)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                await delivery.reject(requeue=True)
        if not self._cancelled and self._session.is_current(inner_session):
            await self._consume_again(inner_session)

    async def _consume_again(self, inner_session: Session) -> None:
        """The broker closed our channel (a delivery unacknowledged past its consumer
        timeout, the queue deleted...) while the connection lives on: consume again.

        The stream also ends when the whole connection is lost, and this may run before the
        supervisor has heard of it. Then consuming again fails with ConnectionFailed and
        nothing is said here: the loss is reported once, by the session. So the line about
        the broker comes only once the connection proved alive.
        """
        delay = 0.1
        said = False
        while not self._cancelled and self._session.is_current(inner_session):
            try:
                await self.attach(inner_session)
                said = said or self._say_stopped()
                return
            except (DeliveryFailed, QueueInUse) as exc:
                said = said or self._say_stopped()
                logger.warning("cannot consume %r yet (%s); retrying in %.1f s",
                               self.queue, exc, delay)
            except (ConnectionFailed, CommunicatorClosed):
                return  # the connection is going: the supervisor reattaches us
            await trio.sleep(delay)
            delay = min(delay * 2, 10.0)

    def _say_stopped(self) -> bool:
        logger.warning("the broker stopped the consumer of %r; consuming again", self.queue)
        return True

    async def cancel(self) -> None:
        if self._cancelled:
            await trio.lowlevel.checkpoint()
            return
        self._cancelled = True
        self._session.forget_consumer(self)
        inner, self._inner = self._inner, None
        if inner is not None:
            try:
                await inner.cancel()
            except (ConnectionFailed, CommunicatorClosed, DeliveryFailed):
                pass  # its connection is gone, and with it the consumer
        for delivery in self._buffer.take_back():
            if not delivery.stale:
                await delivery.reject(requeue=True)
