"""What the in-process broker stores: messages, exchanges and queues, and the rules that
belong to one of them (equivalence on redeclaration, exclusive access, expiry, and the
delivery count that quorum queues keep)."""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from ..._errors import DeclarationMismatch, DeliveryFailed
from .._base import (
    ExchangeType,
    NegativeAck,
    OutgoingMessage,
    QueueInUse,
    QueueSpec,
    declaration_mismatch,
)

if TYPE_CHECKING:
    from ._session import _MemoryConsumer, _MemorySession

__all__ = ["_Exchange", "_Message", "_Outcome", "_Queue", "_death_headers", "check_quorum_spec",
           "full_queue_error", "refuses_more"]

QUEUE_TYPE = "x-queue-type"
#: Quorum queues: how often a message may be returned before it is dead-lettered...
DELIVERY_LIMIT = "x-delivery-limit"
#: ...and the header with which they count the returns so far.
DELIVERY_COUNT = "x-delivery-count"

_Outcome = Literal["ack", "requeue", "dead-letter"]


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

    def difference(self, kind: ExchangeType, durable: bool,
                   auto_delete: bool) -> DeclarationMismatch | None:
        """What makes redeclaring it this way inequivalent; ``None`` if nothing does."""
        for argument, current, received in [("type", self.type, kind),
                                            ("durable", self.durable, durable),
                                            ("auto_delete", self.auto_delete, auto_delete)]:
            if current != received:
                return declaration_mismatch("exchange", self.name, argument, _flag(current),
                                            _flag(received))
        return None


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
    #: When it was last used (declared, fetched from, consumed): ``x-expires`` counts from it.
    last_used: float = 0.0

    def expires_at(self) -> float | None:
        """When ``x-expires`` deletes it if nothing uses it meanwhile (RabbitMQ: no
        consumers, no redeclaration, no ``basic.get``); ``None`` if it never expires."""
        ttl = self.arguments.get("x-expires")
        if not isinstance(ttl, int) or ttl <= 0 or self.consumers:
            return None
        return self.last_used + ttl / 1000

    def difference(self, spec: QueueSpec) -> DeclarationMismatch | None:
        """What makes redeclaring with ``spec`` inequivalent (RabbitMQ's
        ``assert_equivalence``), named as RabbitMQ names it; ``None`` if it is equivalent."""
        for flag in ("durable", "exclusive", "auto_delete"):
            current, received = getattr(self, flag), getattr(spec, flag)
            if current != received:
                return declaration_mismatch("queue", self.name, flag, _flag(current),
                                            _flag(received))
        current_arguments, wanted = _typed(self.arguments), _typed(spec.arguments)
        # The type first, as RabbitMQ does: the other arguments differ because of it.
        for argument in sorted(set(current_arguments) | set(wanted),
                               key=lambda argument: (argument != QUEUE_TYPE, argument)):
            current, received = current_arguments.get(argument), wanted.get(argument)
            if current != received:
                return declaration_mismatch("queue", self.name, argument,
                                            _argument(current), _argument(received))
        return None

    def check_access(self, session: _MemorySession) -> None:
        """Refuse a session other than the owner, like RabbitMQ's RESOURCE_LOCKED."""
        if self.exclusive and self.owner is not session:
            raise QueueInUse(
                f"RESOURCE_LOCKED: queue {self.name!r} is exclusive to another connection"
            )

    @property
    def quorum(self) -> bool:
        return self.arguments.get(QUEUE_TYPE) == "quorum"

    def returned(self, message: _Message) -> tuple[_Message, bool]:
        """``message`` as it comes back to this queue (redelivered; on a quorum queue with
        its delivery count raised), and whether that count is past ``x-delivery-limit``."""
        if not self.quorum:
            return replace(message, redelivered=True), False
        count = message.headers.get(DELIVERY_COUNT, 0)
        count = (count if isinstance(count, int) else 0) + 1
        counted = replace(message, redelivered=True,
                          headers={**message.headers, DELIVERY_COUNT: count})
        limit = self.arguments.get(DELIVERY_LIMIT)
        return counted, isinstance(limit, int) and limit >= 0 and count > limit

    def put_back(self, messages: Sequence[_Message]) -> None:
        """Put ``messages`` back at the head, in the given order."""
        if not self.deleted:  # a deleted queue took its messages with it
            self.messages.extendleft(reversed(messages))

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


def refuses_more(arguments: Mapping[str, Any], ready: int) -> bool:
    """Whether a queue with these arguments, holding ``ready`` ready messages, refuses one
    more: ``x-max-length`` with ``x-overflow: reject-publish``, as RabbitMQ counts it
    (messages delivered and not yet settled do not count)."""
    limit = arguments.get("x-max-length")
    return (arguments.get("x-overflow") == "reject-publish" and type(limit) is int
            and ready >= limit)


def full_queue_error(queues: Sequence[str]) -> NegativeAck:
    """The publisher's error when ``queues`` refused a message (RabbitMQ nacks it; the other
    queues it was routed to keep it)."""
    return NegativeAck(f"the broker nacked the message: queue {', '.join(map(repr, queues))} "
                       "is full (x-max-length, x-overflow: reject-publish)")


def _flag(value: object) -> str:
    """A value as RabbitMQ's inequivalent-arg message shows it (``'true'``, ``'direct'``)."""
    if isinstance(value, bool):
        return f"'{str(value).lower()}'"
    return f"'{value}'"


def _argument(value: object) -> str:
    """An x-argument as RabbitMQ shows it (``none`` when it is not set)."""
    return "none" if value is None else repr(value)


def _typed(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """Queue arguments as RabbitMQ compares them: ``x-queue-type: classic`` is what a queue
    declared without a type has."""
    typed = dict(arguments)
    if typed.get(QUEUE_TYPE) == "classic":
        del typed[QUEUE_TYPE]
    return typed


def check_quorum_spec(name: str, spec: QueueSpec, *, server_named: bool) -> None:
    """Refuse a quorum queue RabbitMQ would refuse: they are durable, shared and named."""
    if spec.arguments.get(QUEUE_TYPE) != "quorum":
        return
    if server_named:
        raise DeliveryFailed("PRECONDITION_FAILED - Cannot declare a server-named queue for "
                             "type rabbit_quorum_queue")
    for refused, invalid in (("exclusive", spec.exclusive), ("auto-delete", spec.auto_delete),
                             ("non-durable", not spec.durable)):
        if invalid:
            raise DeliveryFailed(f"PRECONDITION_FAILED - invalid property '{refused}' for "
                                 f"queue '{name}'")
