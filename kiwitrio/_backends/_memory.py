"""A broker inside the process, with the AMQP 0-9-1 semantics kiwitrio relies on.

:func:`open_memory_session` opens a :class:`~kiwitrio._backend.Session` on a broker that lives
in the current Trio run. It mimics what RabbitMQ does for the vocabulary of
:mod:`kiwitrio._backend`, so code that works against it works against RabbitMQ and vice versa:

* exchanges: the default exchange ``""``, ``direct``, ``topic`` and ``fanout``; the
  predeclared ``amq.direct``, ``amq.topic`` and ``amq.fanout``; auto-delete exchanges go away
  with their last binding;
* queues: per-queue FIFO, server-named ``amq.gen-...`` queues, exclusive queues owned by one
  session and deleted when it closes, auto-delete queues deleted when their last consumer
  goes, per-message TTL, dead-lettering with an ``x-death`` header;
* consumers get at most ``prefetch_count`` unsettled deliveries, round-robin;
* ``publish`` returns once the message sits in every queue it was routed to (the "confirm").

Errors RabbitMQ reports as channel errors (NOT_FOUND, PRECONDITION_FAILED, ACCESS_REFUSED,
RESOURCE_LOCKED) raise :class:`~kiwitrio.DeliveryFailed`; the session stays usable. Messages
are not persisted: ``durable`` and ``persistent`` are recorded or ignored, never written down.

All broker work is synchronous and happens inside the awaiting call; there are no background
tasks, so a delivery is in its consumer's channel by the time ``publish`` (or the ``ack`` that
made room for it) returns.
"""

from __future__ import annotations

import copy
import math
import secrets
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Literal, get_args

import trio

from .._errors import CommunicatorClosed, DeliveryFailed, InUseError, UnroutableError
from .._version import __version__
from ._base import (
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_ROUTING_KEY,
    Consumer,
    Delivery,
    EntityNotFound,
    ExchangeType,
    OutgoingMessage,
    QueueInUse,
    QueueSpec,
    QueueStats,
    Session,
)

__all__ = ["open_memory_session"]

_PRODUCT = "kiwitrio-memory"
#: Names with this prefix are reserved to the broker (RabbitMQ answers ACCESS_REFUSED).
_RESERVED_PREFIX = "amq."
_SERVER_NAMED_PREFIX = "amq.gen-"
#: Exchanges every RabbitMQ vhost has (the headers ones are left out: no headers exchanges here).
_PREDECLARED_EXCHANGES: Mapping[str, ExchangeType] = {
    "amq.direct": "direct",
    "amq.topic": "topic",
    "amq.fanout": "fanout",
}

_Outcome = Literal["ack", "requeue", "dead-letter"]


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


# --- Routing ---------------------------------------------------------------------------------


def _topic_words(key: str) -> list[str]:
    """Split a routing or binding key into words; as in RabbitMQ, ``""`` has no words at all."""
    return key.split(".") if key else []


def _topic_matches(binding_key: str, routing_key: str) -> bool:
    """RabbitMQ topic matching: ``*`` is exactly one word, ``#`` zero or more words.

    Runs the pattern as an NFA over the key's words (the set of pattern positions reachable so
    far), which stays linear where naive backtracking on several ``#`` would not.
    """
    pattern = _topic_words(binding_key)
    states = _skip_hashes(pattern, {0})
    for word in _topic_words(routing_key):
        advanced: set[int] = set()
        for position in states:
            if position == len(pattern):
                continue
            token = pattern[position]
            if token == "#":
                advanced.add(position)  # '#' swallows this word and may swallow more
            elif token in ("*", word):
                advanced.add(position + 1)
        states = _skip_hashes(pattern, advanced)
    return len(pattern) in states


def _skip_hashes(pattern: Sequence[str], states: Iterable[int]) -> set[int]:
    """Add, for each position standing on ``#``, the positions after it (``#`` matching nothing)."""
    closed: set[int] = set()
    for position in states:
        closed.add(position)
        while position < len(pattern) and pattern[position] == "#":
            position += 1
            closed.add(position)
    return closed


def _binding_matches(kind: ExchangeType, binding_key: str, routing_key: str) -> bool:
    """Whether a binding of an exchange of type ``kind`` takes a message with ``routing_key``."""
    if kind == "fanout":
        return True
    if kind == "topic":
        return _topic_matches(binding_key, routing_key)
    return binding_key == routing_key


# --- Broker state ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Message:
    """A message as stored in one queue. Immutable: each queue and each hand-over gets a copy."""

    body: bytes
    content_type: str | None
    correlation_id: str | None
    reply_to: str | None
    headers: Mapping[str, Any]
    exchange: str
    routing_key: str
    redelivered: bool = False
    #: The publishing session's login (as RabbitMQ checks a ``user_id``).
    user_id: str | None = None
    #: The AMQP ``expiration`` property, kept for ``x-death``'s ``original-expiration``.
    expiration_ms: int | None = None
    #: Trio time after which the message is dead; ``None`` for no TTL.
    expires_at: float | None = None

    @classmethod
    def published(
        cls, exchange: str, routing_key: str, message: OutgoingMessage, now: float,
        user_id: str | None = None,
    ) -> _Message:
        """Snapshot an outgoing message, so later changes to the caller's headers don't leak in."""
        ttl = message.expiration_ms
        return cls(
            body=message.body,
            content_type=message.content_type,
            correlation_id=message.correlation_id,
            reply_to=message.reply_to,
            headers=copy.deepcopy(dict(message.headers)),
            exchange=exchange,
            routing_key=routing_key,
            user_id=user_id,
            expiration_ms=ttl,
            expires_at=None if ttl is None else now + ttl / 1000,
        )

    def expired(self, now: float) -> bool:
        """Strictly after the deadline, so a TTL of 0 still reaches a consumer that is ready
        at publish time, as in RabbitMQ."""
        return self.expires_at is not None and now > self.expires_at


def _death_headers(message: _Message, queue: str, reason: str) -> dict[str, Any]:
    """The headers of ``message`` once dead-lettered from ``queue``, written as RabbitMQ does.

    ``x-death`` holds one entry per (queue, reason), most recent first; dying again the same
    way moves that entry to the front and bumps its ``count``. ``x-first-death-*`` record the
    first death and never change.
    """
    headers = copy.deepcopy(dict(message.headers))
    deaths = [dict(entry) for entry in headers.get("x-death", ()) if isinstance(entry, Mapping)]
    key = (queue, reason)
    same = [entry for entry in deaths if (entry.get("queue"), entry.get("reason")) == key]
    if same:
        entry = same[0]
        deaths.remove(entry)
        entry["count"] = int(entry.get("count", 0)) + 1
    else:
        entry = {
            "count": 1,
            "reason": reason,
            "queue": queue,
            "exchange": message.exchange,
            "routing-keys": [message.routing_key],
        }
        if message.expiration_ms is not None:
            entry["original-expiration"] = str(message.expiration_ms)
    headers["x-death"] = [entry, *deaths]
    headers.setdefault("x-first-death-queue", queue)
    headers.setdefault("x-first-death-reason", reason)
    headers.setdefault("x-first-death-exchange", message.exchange)
    return headers


@dataclass(eq=False)
class _Exchange:
    """A named exchange. Bindings are (queue name, binding key), kept in insertion order."""

    name: str
    type: ExchangeType
    durable: bool
    auto_delete: bool
    bindings: dict[tuple[str, str], None] = field(default_factory=dict)


@dataclass(eq=False)
class _Queue:
    """A queue: the broker's storage, plus who may use it and who consumes it."""

    name: str
    durable: bool
    exclusive: bool
    auto_delete: bool
    arguments: dict[str, Any]
    #: The session an exclusive queue belongs to; ``None`` for shared queues.
    owner: _MemorySession | None
    messages: deque[_Message] = field(default_factory=deque)
    consumers: list[_MemoryConsumer] = field(default_factory=list)
    #: Index in :attr:`consumers` where the round-robin search for the next consumer starts.
    cursor: int = 0
    deleted: bool = False
    #: Guards against re-entrant dispatch (dead-lettering can route back into this queue).
    dispatching: bool = False

    def matches(self, spec: QueueSpec) -> bool:
        """Whether redeclaring with ``spec`` is equivalent (RabbitMQ's ``assert_equivalence``)."""
        return (self.durable, self.exclusive, self.auto_delete, self.arguments) == (
            spec.durable,
            spec.exclusive,
            spec.auto_delete,
            dict(spec.arguments),
        )

    def check_access(self, session: _MemorySession) -> None:
        """Refuse a session other than the owner, like RabbitMQ's RESOURCE_LOCKED."""
        if self.exclusive and self.owner is not session:
            raise DeliveryFailed(
                f"RESOURCE_LOCKED: queue {self.name!r} is exclusive to another connection"
            )

    def requeue(self, messages: Sequence[_Message]) -> None:
        """Put ``messages`` back at the head, in the given order, flagged as redelivered."""
        if not self.deleted:  # a deleted queue took its messages with it
            self.messages.extendleft(replace(m, redelivered=True) for m in reversed(messages))

    def next_consumer(self) -> _MemoryConsumer | None:
        """The next consumer, round-robin, that has room for one more unsettled delivery."""
        count = len(self.consumers)
        for offset in range(count):
            index = (self.cursor + offset) % count
            consumer = self.consumers[index]
            if consumer.has_room():
                self.cursor = (index + 1) % count
                return consumer
        return None


class _Broker:
    """Exchanges, queues and bindings shared by the sessions opened on one URL.

    Methods are synchronous and take ``now`` (Trio time) from the caller, so that one
    operation sees one instant, whatever the clock does meanwhile.
    """

    def __init__(self) -> None:
        self.exchanges: dict[str, _Exchange] = {
            name: _Exchange(name, kind, durable=True, auto_delete=False)
            for name, kind in _PREDECLARED_EXCHANGES.items()
        }
        self.queues: dict[str, _Queue] = {}
        self._expiry_changed = trio.Event()

    async def expire_forever(self) -> None:
        """Dead-letter messages as they expire at the heads of their queues."""
        while True:
            heads = [q.messages[0].expires_at for q in self.queues.values()
                     if q.messages and q.messages[0].expires_at is not None]
            # Just past the deadline: a message expires strictly after it (see expired()).
            with trio.move_on_at(min(heads) + 1e-6 if heads else math.inf):
                await self._expiry_changed.wait()
            self._expiry_changed = trio.Event()
            now = trio.current_time()
            for queue in list(self.queues.values()):
                self.dispatch(queue, now)

    # Exchanges

    def declare_exchange(
        self, name: str, kind: ExchangeType, *, durable: bool, auto_delete: bool
    ) -> None:
        """Create the exchange, or check that the existing one was declared the same way."""
        if kind not in get_args(ExchangeType):
            raise DeliveryFailed(f"COMMAND_INVALID: unknown exchange type {kind!r}")
        _check_not_default(name)
        existing = self.exchanges.get(name)
        if existing is None:
            # RabbitMQ only checks the reserved prefix for exchanges it would create.
            _check_not_reserved("exchange", name)
            self.exchanges[name] = _Exchange(name, kind, durable, auto_delete)
        elif (existing.type, existing.durable, existing.auto_delete) != (
            kind,
            durable,
            auto_delete,
        ):
            raise DeliveryFailed(
                f"PRECONDITION_FAILED: inequivalent redeclaration of exchange {name!r}"
            )

    def delete_exchange(self, name: str, *, if_unused: bool = False) -> None:
        """Delete an exchange and its bindings. Deleting a missing exchange is fine.

        With ``if_unused``, an exchange that still has bindings is refused
        (PRECONDITION_FAILED), as RabbitMQ does.
        """
        _check_not_default(name)
        _check_not_reserved("exchange", name)
        exchange = self.exchanges.get(name)
        if if_unused and exchange is not None and exchange.bindings:
            raise DeliveryFailed(f"PRECONDITION_FAILED: exchange {name!r} in use")
        self.exchanges.pop(name, None)

    def exchange_exists(self, name: str) -> bool:
        return name == "" or name in self.exchanges

    def _exchange(self, name: str) -> _Exchange:
        """A non-default exchange, or NOT_FOUND."""
        exchange = self.exchanges.get(name)
        if exchange is None:
            raise EntityNotFound(f"NOT_FOUND: no exchange {name!r}")
        return exchange

    # Queues

    def declare_queue(self, spec: QueueSpec, session: _MemorySession) -> _Queue:
        """Create the queue (named by the broker if ``spec.name`` is empty) or check it."""
        if not spec.name:
            return self._create_queue(self._fresh_queue_name(), spec, session)
        # RabbitMQ refuses amq.* queue names before looking them up, even for existing queues.
        _check_not_reserved("queue", spec.name)
        existing = self.queues.get(spec.name)
        if existing is None:
            return self._create_queue(spec.name, spec, session)
        if existing.exclusive and existing.owner is not session:
            raise QueueInUse(spec.name)
        if not existing.matches(spec):
            raise DeliveryFailed(
                f"PRECONDITION_FAILED: inequivalent redeclaration of queue {spec.name!r}"
            )
        return existing

    def _create_queue(self, name: str, spec: QueueSpec, session: _MemorySession) -> _Queue:
        queue = _Queue(
            name=name,
            durable=spec.durable,
            exclusive=spec.exclusive,
            auto_delete=spec.auto_delete,
            arguments=dict(spec.arguments),
            owner=session if spec.exclusive else None,
        )
        self.queues[name] = queue
        return queue

    def _fresh_queue_name(self) -> str:
        while True:
            name = _SERVER_NAMED_PREFIX + secrets.token_urlsafe(16)
            if name not in self.queues:
                return name

    def queue(self, name: str, session: _MemorySession) -> _Queue:
        """The queue ``name`` if ``session`` may use it; NOT_FOUND or RESOURCE_LOCKED otherwise."""
        queue = self.queues.get(name)
        if queue is None:
            raise DeliveryFailed(f"NOT_FOUND: no queue {name!r}")
        queue.check_access(session)
        return queue

    def delete_queue(self, queue: _Queue) -> None:
        """Delete a queue: its messages are dropped (not dead-lettered, as in RabbitMQ), its
        consumers' channels end, and its bindings go, possibly taking auto-delete exchanges."""
        if queue.deleted:
            return
        queue.deleted = True
        del self.queues[queue.name]
        queue.messages.clear()
        if queue.owner is not None:
            queue.owner._exclusive_queues.pop(queue, None)
        for consumer in list(queue.consumers):
            consumer._end()
        queue.consumers.clear()
        for exchange in list(self.exchanges.values()):
            stale = [binding for binding in exchange.bindings if binding[0] == queue.name]
            self._remove_bindings(exchange, stale)

    # Bindings

    def bind(self, queue: _Queue, exchange_name: str, routing_key: str) -> None:
        _check_not_default(exchange_name)
        self._exchange(exchange_name).bindings[(queue.name, routing_key)] = None

    def unbind(self, queue: _Queue, exchange_name: str, routing_key: str) -> None:
        """Remove a binding; removing one that does not exist is fine, as in RabbitMQ."""
        _check_not_default(exchange_name)
        exchange = self._exchange(exchange_name)
        if (queue.name, routing_key) in exchange.bindings:
            self._remove_bindings(exchange, [(queue.name, routing_key)])

    def _remove_bindings(self, exchange: _Exchange, bindings: Sequence[tuple[str, str]]) -> None:
        """Remove bindings; an auto-delete exchange goes with its last one."""
        for binding in bindings:
            del exchange.bindings[binding]
        if bindings and exchange.auto_delete and not exchange.bindings:
            self.exchanges.pop(exchange.name, None)

    # Messages

    def route(self, exchange_name: str, routing_key: str) -> list[_Queue]:
        """The queues a message goes to, each once however many of its bindings match."""
        if exchange_name == "":
            # The default exchange is implicitly bound to every queue by the queue's name.
            queue = self.queues.get(routing_key)
            return [] if queue is None else [queue]
        exchange = self._exchange(exchange_name)
        names = dict.fromkeys(
            queue_name
            for queue_name, binding_key in exchange.bindings
            if _binding_matches(exchange.type, binding_key, routing_key)
        )
        return [self.queues[name] for name in names]

    def enqueue(self, queue: _Queue, message: _Message, now: float) -> None:
        queue_ttl = queue.arguments.get("x-message-ttl")
        if queue_ttl is not None:
            # The queue's TTL and the message's own: whichever ends first.
            expires_at = now + int(queue_ttl) / 1000
            if message.expires_at is None or expires_at < message.expires_at:
                message = replace(message, expires_at=expires_at)
        queue.messages.append(message)
        if message.expires_at is not None:
            self._expiry_changed.set()
        self.dispatch(queue, now)

    def dispatch(self, queue: _Queue, now: float) -> None:
        """Hand head messages to consumers with room, round-robin, until either runs out.

        Expired messages met at the head are dead-lettered (or dropped) instead: like
        RabbitMQ, TTL is enforced at the head of the queue, here whenever the queue is touched.
        """
        if queue.dispatching or queue.deleted:
            return  # the outer dispatch of this queue will see what was added
        queue.dispatching = True
        try:
            while queue.messages:
                head = queue.messages[0]
                if head.expired(now):
                    queue.messages.popleft()
                    self.dead_letter(queue, head, "expired", now)
                    continue
                consumer = queue.next_consumer()
                if consumer is None:
                    break
                queue.messages.popleft()
                consumer._deliver(head)
        finally:
            queue.dispatching = False

    def dead_letter(self, queue: _Queue, message: _Message, reason: str, now: float) -> None:
        """Republish to the queue's dead-letter exchange, or drop the message if it has none.

        As in RabbitMQ, an unroutable dead letter, or one whose exchange is missing, is dropped
        silently, and the TTL is removed so that the letter does not expire again.
        """
        if queue.deleted or DEAD_LETTER_EXCHANGE not in queue.arguments:
            return
        exchange = str(queue.arguments[DEAD_LETTER_EXCHANGE])
        if not self.exchange_exists(exchange):
            return
        routing_key = str(queue.arguments.get(DEAD_LETTER_ROUTING_KEY, message.routing_key))
        letter = replace(
            message,
            headers=_death_headers(message, queue.name, reason),
            exchange=exchange,
            routing_key=routing_key,
            redelivered=False,
            expiration_ms=None,
            expires_at=None,
        )
        for target in self.route(exchange, routing_key):
            self.enqueue(target, letter, now)

    def consumer_removed(self, queue: _Queue, now: float) -> None:
        """After a consumer left: delete an auto-delete queue left without consumers, or else
        let the remaining consumers pick up what the leaver gave back."""
        if queue.auto_delete and not queue.consumers:
            self.delete_queue(queue)
        else:
            self.dispatch(queue, now)


def _check_not_default(exchange: str) -> None:
    if exchange == "":
        raise DeliveryFailed("ACCESS_REFUSED: operation not permitted on the default exchange")


def _check_not_reserved(kind: str, name: str) -> None:
    if name.startswith(_RESERVED_PREFIX):
        raise DeliveryFailed(
            f"ACCESS_REFUSED: {kind} name {name!r} contains reserved prefix 'amq.*'"
        )


# --- Backend objects -------------------------------------------------------------------------


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
        """Route a copy to every matching queue; done (confirmed) when this returns."""
        await self._enter()
        if message.expiration_ms is not None and message.expiration_ms < 0:
            raise DeliveryFailed("PRECONDITION_FAILED: negative expiration")
        targets = self._broker.route(exchange, routing_key)
        if mandatory and not targets:
            raise UnroutableError(f"no queue for routing key {routing_key!r} on {exchange!r}")
        now = trio.current_time()
        stored = _Message.published(exchange, routing_key, message, now, self.login)
        for queue in targets:
            self._broker.enqueue(queue, stored, now)

    async def get(self, queue: str) -> Delivery | None:
        """Take the head message (``basic.get`` without auto-ack); ``None`` if none is left."""
        await self._enter()
        source = self._broker.queue(queue, self)
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
            queue.requeue(messages)
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
        consumer._queue.requeue([delivery._message for delivery in buffered])
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
            queue.requeue([delivery._message])
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
        send, receive = trio.open_memory_channel[Delivery](prefetch_count)
        self.deliveries = receive
        self.queue = queue.name
        self._session = session
        self._queue = queue
        self._prefetch_count = prefetch_count
        self._send = send
        # Our own receive handle, to take back what the caller has not received even if the
        # caller closed theirs (which would otherwise discard the buffer or break sends).
        self._backdoor = receive.clone()
        self._in_flight = 0
        self._stopped = False

    def has_room(self) -> bool:
        return not self._stopped and self._in_flight < self._prefetch_count

    def _deliver(self, message: _Message) -> None:
        delivery = self._session._hand_out(message, self._queue, self)
        self._in_flight += 1
        self._send.send_nowait(delivery)

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
        buffered: list[_MemoryDelivery] = []
        while True:
            try:
                delivery = self._backdoor.receive_nowait()
            except trio.WouldBlock:
                break
            assert isinstance(delivery, _MemoryDelivery)
            buffered.append(delivery)
        self._end()
        return buffered

    def _end(self) -> None:
        """End the channel: receivers see what is still buffered, then ``EndOfChannel``."""
        self._stopped = True
        self._session._consumers.pop(self, None)
        self._send.close()
        self._backdoor.close()


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
