"""The broker's sessions, consumers and deliveries, and how a URL finds its broker."""


from __future__ import annotations

import copy
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from ..._errors import CommunicatorClosed, DeliveryFailed, InUseError, UnroutableError
from ..._version import __version__
from .._base import (
    Consumer,
    Delivery,
    EntityNotFound,
    ExchangeType,
    OutgoingMessage,
    QueueSpec,
    QueueStats,
    Session,
)
from .._buffer import DeliveryBuffer
from ._broker import _PRODUCT, _Broker
from ._entities import _Message, _Outcome, _Queue, full_queue_error, refuses_more

__all__ = ["open_memory_session"]


@asynccontextmanager
async def open_memory_session(url: str) -> AsyncIterator[Session]:
    """Connect to the in-process broker named by ``url`` (``memory://`` or ``memory://name``).

    Sessions opened with the same URL in the same Trio run share one broker, which lives as
    long as the run; separate runs never share anything. Leaving the context closes the
    session, which requeues its unsettled deliveries and deletes its exclusive queues.
    """
    broker = _broker_for(url)
    # Connecting is a checkpoint with a real broker; keep the same shape here.
    await trio.lowlevel.checkpoint()
    session = _MemorySession(
        broker, urllib.parse.unquote(urllib.parse.urlsplit(url).username or "guest"))
    try:
        async with trio.open_nursery() as nursery:
            # Messages expire even in queues nobody touches (a lease queue whose owner is
            # gone): each open session runs the broker's expiry clock.
            nursery.start_soon(broker.expire_forever)
            try:
                yield session
            finally:
                nursery.cancel_scope.cancel()
    finally:
        # Synchronous so that a cancelled scope can neither skip the close nor, by raising
        # Cancelled from here, hide the exception that is leaving the block.
        session._close()


# One registry per Trio run: a RunVar dies with its run, so tests in separate runs are isolated.
_BROKERS: trio.lowlevel.RunVar[dict[str, _Broker]] = trio.lowlevel.RunVar("kiwitrio_memory")


def _broker_for(url: str) -> _Broker:
    """The broker of this run for ``url``, created on first use."""
    key = _broker_key(url)
    try:
        registry = _BROKERS.get()
    except LookupError:
        registry = {}
        _BROKERS.set(registry)
    broker = registry.get(key)
    if broker is None:
        broker = registry[key] = _Broker()
    return broker


def _broker_key(url: str) -> str:
    """Identify a broker by host and path, so ``memory://x`` and ``memory://x/`` are the same
    (and ``memory://alice@x`` too: the user is the session's, not the broker's)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "memory":
        raise ValueError(f"not a memory:// URL: {url!r}")
    return parts.netloc.rpartition("@")[2] + parts.path.rstrip("/")



class _MemorySession(Session):
    """One connection to a :class:`_Broker`.

    Every operation is a checkpoint, taken before the work so that a cancelled call did
    nothing and a call that returned did everything (a published message is enqueued).
    """

    def __init__(self, broker: _Broker, login: str = "guest") -> None:
        self.server_properties = {"product": _PRODUCT, "version": __version__}
        #: The user in the URL (``memory://alice@name``), ``guest`` by default: stamped as
        #: each published message's ``user_id``, as RabbitMQ does for a checked one.
        self.login = login
        self._broker = broker
        self._closed = False
        self._consumers: dict[_MemoryConsumer, None] = {}
        #: Unsettled deliveries by delivery tag; dict order is delivery order.
        self._unsettled: dict[int, _MemoryDelivery] = {}
        #: Exclusive queues this session declared and that still exist.
        self._exclusive_queues: dict[_Queue, None] = {}
        self._next_tag = 1

    async def _enter(self) -> None:
        """Checkpoint, then fail if closed (checked after: another task may close us meanwhile)."""
        await trio.lowlevel.checkpoint()
        self._check_open()

    def _check_open(self) -> None:
        if self._closed:
            raise CommunicatorClosed("the memory broker session is closed")

    async def declare_exchange(
        self, name: str, type: ExchangeType, *, durable: bool, auto_delete: bool
    ) -> None:
        await self._enter()
        self._broker.declare_exchange(name, type, durable=durable, auto_delete=auto_delete)

    async def declare_queue(self, spec: QueueSpec) -> str:
        await self._enter()
        queue = self._broker.declare_queue(spec, self)
        if queue.owner is self:
            self._exclusive_queues[queue] = None
        return queue.name

    async def delete_queue(self, name: str, *, if_unused: bool = False) -> int:
        """Delete ``name`` if it exists (RabbitMQ's ``queue.delete`` is idempotent)."""
        await self._enter()
        queue = self._broker.queues.get(name)
        if queue is None:
            return 0
        queue.check_access(self)
        if if_unused and queue.consumers:
            raise InUseError(f"the queue {name!r} has consumers", kind="queue", name=name,
                             consumers=len(queue.consumers))
        count = len(queue.messages)
        self._broker.delete_queue(queue)
        return count

    async def purge_queue(self, name: str) -> int:
        await self._enter()
        queue = self._broker.queues.get(name)
        if queue is None:
            raise EntityNotFound(f"NOT_FOUND: no queue {name!r}")
        queue.check_access(self)
        count = len(queue.messages)
        queue.messages.clear()
        return count

    async def inspect_queue(self, name: str) -> QueueStats | None:
        await self._enter()
        queue = self._broker.queues.get(name)
        if queue is None:
            return None
        queue.check_access(self)  # as RabbitMQ: another connection's exclusive queue is locked
        self._broker.use(queue)  # a passive declare renews x-expires, as RabbitMQ's does
        return QueueStats(messages=len(queue.messages), consumers=len(queue.consumers))

    async def delete_exchange(self, name: str, *, if_unused: bool = False) -> None:
        await self._enter()
        self._broker.delete_exchange(name, if_unused=if_unused)

    async def bind_queue(self, queue: str, exchange: str, routing_key: str) -> None:
        await self._enter()
        self._broker.bind(self._broker.queue(queue, self), exchange, routing_key)

    async def unbind_queue(self, queue: str, exchange: str, routing_key: str) -> None:
        await self._enter()
        self._broker.unbind(self._broker.queue(queue, self), exchange, routing_key)

    async def publish(
        self, exchange: str, routing_key: str, message: OutgoingMessage, *, mandatory: bool
    ) -> None:
        """Route a copy to every matching queue; done (confirmed) when this returns.
        NegativeAck if a full ``reject-publish`` queue refused it (the others have it)."""
        await self._enter()
        if message.expiration_ms is not None and message.expiration_ms < 0:
            raise DeliveryFailed("PRECONDITION_FAILED: negative expiration")
        targets = self._broker.route(exchange, routing_key)
        if mandatory and not targets:
            raise UnroutableError(f"no queue for routing key {routing_key!r} on {exchange!r}")
        now = trio.current_time()
        stored = _Message.published(exchange, routing_key, message, now, self.login)
        full = [queue.name for queue in targets
                if refuses_more(queue.arguments, len(queue.messages))]
        for queue in targets:
            if queue.name not in full:
                self._broker.enqueue(queue, stored, now)
        if full:
            raise full_queue_error(full)

    async def get(self, queue: str) -> Delivery | None:
        """Take the head message (``basic.get`` without auto-ack); ``None`` if none is left."""
        await self._enter()
        source = self._broker.queue(queue, self)
        self._broker.use(source)
        now = trio.current_time()
        # Let dispatch clear expired messages off the head first.
        self._broker.dispatch(source, now)
        if not source.messages:
            return None
        return self._hand_out(source.messages.popleft(), source, None)

    async def consume(self, queue: str, *, prefetch_count: int,
                      exclusive: bool = False) -> Consumer:
        """Subscribe; ``prefetch_count`` must be at least 1 (a bounded channel needs room)."""
        if prefetch_count < 1:
            raise ValueError("prefetch_count must be at least 1")
        await self._enter()
        source = self._broker.queue(queue, self)
        # RabbitMQ's rules for exclusive consumers (ACCESS_REFUSED either way).
        if source.consumers and (exclusive or source.consumers[0].exclusive):
            raise DeliveryFailed(f"ACCESS_REFUSED: queue {queue!r} in exclusive use")
        consumer = _MemoryConsumer(self, source, prefetch_count, exclusive=exclusive)
        self._consumers[consumer] = None
        source.consumers.append(consumer)
        self._broker.use(source)
        self._broker.dispatch(source, trio.current_time())
        return consumer

    async def aclose(self) -> None:
        """Close: requeue unsettled deliveries, end consumers, delete exclusive queues."""
        # Close first, checkpoint after: a cancelled aclose must still close.
        self._close()
        await trio.lowlevel.checkpoint()

    def _close(self) -> None:
        """Close synchronously; see :meth:`aclose`."""
        if self._closed:
            return
        self._closed = True
        queues = [consumer._queue for consumer in self._consumers]
        for consumer in list(self._consumers):
            # Buffered deliveries are still in self._unsettled and are requeued below.
            consumer._stop()
        self._requeue_unsettled()
        now = trio.current_time()
        for queue in list(self._exclusive_queues):
            self._broker.delete_queue(queue)
        for queue in queues:
            self._broker.consumer_removed(queue, now)

    def _requeue_unsettled(self) -> None:
        """Give every unsettled delivery back to its queue's head, keeping delivery order."""
        by_queue: dict[_Queue, list[_Message]] = {}
        for delivery in self._unsettled.values():
            delivery._settled = True
            by_queue.setdefault(delivery._queue, []).append(delivery._message)
        self._unsettled.clear()
        now = trio.current_time()
        for queue, messages in by_queue.items():
            self._broker.requeue(queue, messages, now)
            self._broker.dispatch(queue, now)

    def _hand_out(
        self, message: _Message, queue: _Queue, consumer: _MemoryConsumer | None
    ) -> _MemoryDelivery:
        """Make ``message`` an unsettled delivery of this session."""
        delivery = _MemoryDelivery(message, queue, self, consumer, self._next_tag)
        self._unsettled[self._next_tag] = delivery
        self._next_tag += 1
        return delivery

    def _cancel_consumer(self, consumer: _MemoryConsumer) -> None:
        """Stop ``consumer`` and requeue the deliveries it had buffered but not handed over."""
        buffered = consumer._stop()
        for delivery in buffered:
            delivery._settled = True
            del self._unsettled[delivery._tag]
        self._broker.requeue(consumer._queue, [delivery._message for delivery in buffered],
                             trio.current_time())
        self._broker.consumer_removed(consumer._queue, trio.current_time())

    def _settle(self, delivery: _MemoryDelivery, outcome: _Outcome) -> None:
        """Ack, requeue or dead-letter a delivery once; later attempts do nothing."""
        self._check_open()
        if delivery._settled:
            return
        delivery._settled = True
        del self._unsettled[delivery._tag]
        if delivery._consumer is not None:
            delivery._consumer._in_flight -= 1
        queue, now = delivery._queue, trio.current_time()
        if outcome == "requeue":
            self._broker.requeue(queue, [delivery._message], now)
        elif outcome == "dead-letter":
            self._broker.dead_letter(queue, delivery._message, "rejected", now)
        # The consumer has room again, or the queue has a message back: hand out more.
        self._broker.dispatch(queue, now)


class _MemoryConsumer(Consumer):
    """A subscription; never has more than ``prefetch_count`` deliveries unsettled.

    Since the channel holds ``prefetch_count`` items and only unsettled deliveries can be in
    it, ``send_nowait`` always has room.
    """

    def __init__(self, session: _MemorySession, queue: _Queue, prefetch_count: int, *,
                 exclusive: bool = False) -> None:
        #: The queue's only consumer while it lasts (see _MemorySession.consume).
        self.exclusive = exclusive
        self._buffer = DeliveryBuffer(prefetch_count)
        self.deliveries = self._buffer.deliveries
        self.queue = queue.name
        self._session = session
        self._queue = queue
        self._prefetch_count = prefetch_count
        self._in_flight = 0
        self._stopped = False

    def has_room(self) -> bool:
        return not self._stopped and self._in_flight < self._prefetch_count

    def _deliver(self, message: _Message) -> None:
        delivery = self._session._hand_out(message, self._queue, self)
        self._in_flight += 1
        self._buffer.put_nowait(delivery)

    async def cancel(self) -> None:
        """Stop deliveries and requeue buffered ones; the channel then ends. Idempotent."""
        # Work first, checkpoint after: cancellation must not leave the consumer running.
        if not self._stopped:
            self._session._cancel_consumer(self)
        await trio.lowlevel.checkpoint()

    def _stop(self) -> list[_MemoryDelivery]:
        """Detach from the queue and end the channel; return the deliveries still buffered."""
        if self._stopped:
            return []
        self._queue.consumers.remove(self)
        self._session._broker.use(self._queue)  # unused from now on, maybe
        buffered = self._buffer.take_back()
        self._end()
        return [delivery for delivery in buffered if isinstance(delivery, _MemoryDelivery)]

    def _end(self) -> None:
        """End the channel: receivers see what is still buffered, then ``EndOfChannel``."""
        self._stopped = True
        self._session._consumers.pop(self, None)
        self._buffer.end()


class _MemoryDelivery(Delivery):
    """A message handed to a session; settling is a checkpoint taken before the settlement."""

    def __init__(
        self,
        message: _Message,
        queue: _Queue,
        session: _MemorySession,
        consumer: _MemoryConsumer | None,
        tag: int,
    ) -> None:
        self.body = message.body
        self.content_type = message.content_type
        self.correlation_id = message.correlation_id
        self.reply_to = message.reply_to
        # A private copy: a receiver editing its headers must not touch other copies.
        self.headers = copy.deepcopy(dict(message.headers))
        self.redelivered = message.redelivered
        self.exchange = message.exchange
        self.routing_key = message.routing_key
        self.user_id = message.user_id
        self._message = message
        self._queue = queue
        self._session = session
        self._consumer = consumer
        self._tag = tag
        self._settled = False

    @property
    def settled(self) -> bool:
        return self._settled

    async def ack(self) -> None:
        await trio.lowlevel.checkpoint()
        self._session._settle(self, "ack")

    async def reject(self, *, requeue: bool) -> None:
        await trio.lowlevel.checkpoint()
        self._session._settle(self, "requeue" if requeue else "dead-letter")
