"""The broker interface that the message kinds are written against.

Two implementations exist: :mod:`kiwitrio._backends._amqp` (RabbitMQ through aio-pika) and
:mod:`kiwitrio._backends._memory` (a broker inside the process). Tasks, RPC and broadcasts
(:mod:`kiwitrio._kinds`) only use the small
AMQP-shaped vocabulary defined here, so both backends give them the same semantics.

All methods are Trio-flavoured. Cancelling a caller cancels the wait, not necessarily the
operation: a cancelled :meth:`Session.publish` may still have reached the broker.
"""

from __future__ import annotations

import abc
import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import trio
from pamqp import commands as spec

from .._errors import DeclarationMismatch, DeliveryFailed

__all__ = [
    "DEAD_LETTER_EXCHANGE",
    "DEAD_LETTER_ROUTING_KEY",
    "RENAMES",
    "Consumer",
    "Delivery",
    "DeliveryReceiver",
    "EntityNotFound",
    "ExchangeType",
    "NegativeAck",
    "OutgoingMessage",
    "QueueInUse",
    "QueueSpec",
    "QueueStats",
    "Session",
    "dead_letter_to",
    "declaration_mismatch",
    "drain",
    "is_negative_ack",
    "names_in_place_of",
]

ExchangeType = Literal["direct", "topic", "fanout"]

#: AMQP queue arguments understood by both backends.
DEAD_LETTER_EXCHANGE = "x-dead-letter-exchange"
DEAD_LETTER_ROUTING_KEY = "x-dead-letter-routing-key"


def dead_letter_to(exchange: str, routing_key: str | None = None) -> dict[str, str]:
    """The queue arguments that send a queue's dead letters (rejected without requeue,
    expired) to ``exchange``, with ``routing_key`` (``None``: the message's own)."""
    arguments = {DEAD_LETTER_EXCHANGE: exchange}
    if routing_key is not None:
        arguments[DEAD_LETTER_ROUTING_KEY] = routing_key
    return arguments


class QueueInUse(DeliveryFailed):
    """The queue is exclusive to another connection (RabbitMQ's RESOURCE_LOCKED): it cannot
    be declared, consumed, fetched from or inspected here (publishing to it is fine)."""


#: Arguments that testing_mode sets (auto-delete exchanges, expiring queues).
_TESTING_MODE_ARGUMENTS = frozenset({"auto_delete", "x-expires"})


def declaration_mismatch(kind: str, name: str, argument: str, current: str,
                         received: str) -> DeclarationMismatch:
    """The error both backends raise for a declaration that differs from the existing queue
    or exchange: which ``argument`` differs, and its likely cause."""
    current, received = _shown(argument, current), _shown(argument, received)
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
        f"the {kind} {name!r} exists with other settings: {argument!r} is {current} on the "
        f"broker but {received} here; {hint}", kind=kind, name=name, argument=argument)


_TYPED_VALUE = re.compile(r"^the value (?P<value>.*) of type '[^']*'$", re.DOTALL)


def _shown(argument: str, value: str) -> str:
    """A value of RabbitMQ's inequivalent-arg message, said plainly (RabbitMQ 3 writes "the
    value 'quorum' of type 'longstr'" and "none" for an argument not set)."""
    match = _TYPED_VALUE.match(value)
    if match is not None:
        value = match["value"]
    if argument == "x-queue-type" and value == "none":
        return "not set (a classic queue)"
    return value


class EntityNotFound(DeliveryFailed):
    """The exchange (or queue) a message was published to does not exist (NOT_FOUND)."""


class NegativeAck(DeliveryFailed):
    """The broker nacked a published message: a queue it was routed to did not take it.

    RabbitMQ 4 does this when one of those queues is being deleted (an exclusive queue whose
    connection closed, an auto-delete queue that lost its last consumer); the other queues the
    message was routed to have it. RabbitMQ 3 dropped the copy silently and acked.
    """


#: How many fresh names a renamable queue (:attr:`QueueSpec.renamable`) may take in turn.
RENAMES = 4


def names_in_place_of(name: str) -> list[str]:
    """The names a renamable queue ``name`` takes, in this order, where the ones before are
    held: ``name.1``, ``name.2``... Fixed, so that a sender that addresses the queue by name
    can find it under another one."""
    return [f"{name}.{n}" for n in range(1, RENAMES + 1)]


def is_negative_ack(exc: BaseException) -> bool:
    """Whether a publish failed with a negative publisher confirm (``Basic.Nack``).

    True for :class:`NegativeAck`, and for a :class:`DeliveryFailed` caused by an exception
    that carries the ``Basic.Nack`` frame (aiormq's ``DeliveryError``), for a backend that
    does not raise :class:`NegativeAck` itself.
    """
    if isinstance(exc, NegativeAck):
        return True
    if not isinstance(exc, DeliveryFailed):
        return False
    return isinstance(getattr(exc.__cause__, "frame", None), spec.Basic.Nack)


@dataclass(frozen=True)
class OutgoingMessage:
    """A message to publish. ``headers`` values must be AMQP field values (str, int, bytes...)."""

    body: bytes
    content_type: str
    correlation_id: str | None = None
    reply_to: str | None = None
    headers: Mapping[str, Any] = field(default_factory=dict)
    persistent: bool = False
    #: Per-message time to live, in milliseconds (AMQP ``expiration``).
    expiration_ms: int | None = None


@dataclass(frozen=True)
class QueueSpec:
    """How to declare a queue. ``name=None`` asks the broker for a unique name."""

    name: str | None
    durable: bool = False
    exclusive: bool = False
    auto_delete: bool = False
    arguments: Mapping[str, Any] = field(default_factory=dict)
    #: Whether a reconnecting session declares it again on each new connection (False: a
    #: queue nothing waits for, such as the catalogue of task queues, which must not hold
    #: up a reconnection when the node that has it is down).
    redeclare: bool = True
    #: Whether a reconnecting session may declare it under a fresh name when its own name is
    #: still held on the broker (:class:`QueueInUse`). For exclusive queues that nothing
    #: addresses by name, only through bindings: RabbitMQ 4 with Khepri keeps the exclusive
    #: queues of a node that died until that node is back or forgotten, so the old name can
    #: stay locked for good. The session keeps using the name it was given; it translates.
    renamable: bool = False


@dataclass(frozen=True)
class QueueStats:
    """What the broker says about a queue right now."""

    messages: int
    consumers: int


class Delivery(abc.ABC):
    """A message handed to a consumer (or fetched with :meth:`Session.get`).

    It stays unacknowledged, and so owned by this client, until :meth:`ack` or :meth:`reject`.
    Settling twice is a no-op. If the session closes first, the broker requeues it.
    """

    body: bytes
    content_type: str | None
    correlation_id: str | None
    reply_to: str | None
    headers: Mapping[str, Any]
    #: True when the broker delivered this message before (to this or another consumer).
    redelivered: bool
    exchange: str
    routing_key: str
    #: The login of the connection that published it, as the broker checked it (RabbitMQ
    #: refuses a ``user_id`` other than the publisher's own); ``None`` if the publisher did
    #: not set one.
    user_id: str | None = None

    @property
    @abc.abstractmethod
    def settled(self) -> bool:
        """True once acked or rejected (by us, or implicitly by a closed session)."""

    @property
    def delivery_count(self) -> int:
        """How often a quorum queue had this message returned before (0: the first delivery,
        and always 0 from a classic queue, which does not count): its ``x-delivery-count``."""
        count = self.headers.get("x-delivery-count")
        return count if type(count) is int and count > 0 else 0

    @property
    def stale(self) -> bool:
        """True once the connection it came on is gone: the broker has requeued it, so it
        must not be processed (another consumer may have it already)."""
        return False

    @abc.abstractmethod
    async def ack(self) -> None:
        """Tell the broker the message is done with; it is removed from its queue."""

    @abc.abstractmethod
    async def reject(self, *, requeue: bool) -> None:
        """Give the message back (``requeue=True``) or dead-letter/drop it (``requeue=False``)."""


class DeliveryReceiver(Protocol):
    """The receiving end of a consumer: a bounded stream of deliveries.

    ``trio.MemoryReceiveChannel[Delivery]`` is one. Iteration ends (and ``receive`` raises
    ``trio.EndOfChannel``) when the consumer is cancelled or its session closes.
    """

    async def receive(self) -> Delivery: ...

    def receive_nowait(self) -> Delivery: ...

    def __aiter__(self) -> AsyncIterator[Delivery]: ...


def drain(receiver: DeliveryReceiver) -> AsyncIterator[Delivery]:
    """Iterate over ``receiver``, taking what is already buffered without a Trio checkpoint
    per delivery; only an empty buffer is awaited (and checkpoints).

    The buffer is bounded by the consumer's prefetch count, so a loop over it still yields to
    other tasks at least that often. Under load this saves a task switch per delivery.
    """
    return _Drain(receiver)


class _Drain:
    __slots__ = ("_receiver",)

    def __init__(self, receiver: DeliveryReceiver) -> None:
        self._receiver = receiver

    def __aiter__(self) -> _Drain:
        return self

    async def __anext__(self) -> Delivery:
        try:
            try:
                return self._receiver.receive_nowait()
            except trio.WouldBlock:
                return await self._receiver.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None


class Consumer(abc.ABC):
    """An active subscription to one queue.

    Deliveries arrive on :attr:`deliveries`, bounded: the broker never has more than
    ``prefetch_count`` unsettled deliveries out to one consumer, and the stream holds that
    many.
    """

    deliveries: DeliveryReceiver
    queue: str

    @abc.abstractmethod
    async def cancel(self) -> None:
        """Stop deliveries; deliveries still buffered and unsettled are requeued.

        Deliveries already taken from :attr:`deliveries` remain the caller's to settle.
        Idempotent.
        """


class Session(abc.ABC):
    """One connection to a broker."""

    #: What the broker said about itself (``product``, ``version``...).
    server_properties: Mapping[str, Any]
    #: Why the broker holds back this connection's publishing (RabbitMQ's
    #: ``connection.blocked``, sent during a memory or disk alarm), or ``None``. Publishes
    #: wait meanwhile; they go out once the broker unblocks the connection.
    blocked_reason: str | None = None
    #: Called (Trio side, no arguments) each time :attr:`blocked_reason` changes.
    on_flow_control: Callable[[], None] | None = None

    @abc.abstractmethod
    async def declare_exchange(
        self, name: str, type: ExchangeType, *, durable: bool, auto_delete: bool
    ) -> None: ...

    @abc.abstractmethod
    async def declare_queue(self, spec: QueueSpec) -> str:
        """Declare (or check) a queue and return its name.

        Raises :class:`QueueInUse` if it is exclusive to another connection.
        """

    @abc.abstractmethod
    async def delete_queue(self, name: str, *, if_unused: bool = False) -> int:
        """Delete a queue if it exists; returns how many messages it held (0 if missing).

        With ``if_unused``, a queue that has consumers is left alone and
        :class:`~kiwitrio.InUseError` raised (checked by the broker, atomically).
        """

    @abc.abstractmethod
    async def purge_queue(self, name: str) -> int:
        """Remove the ready messages of a queue; returns how many. Unacknowledged ones stay
        with their consumers. Raises EntityNotFound if the queue does not exist."""

    @abc.abstractmethod
    async def inspect_queue(self, name: str) -> QueueStats | None:
        """Ready messages and consumers of a queue (a passive declare); ``None`` if missing."""

    @abc.abstractmethod
    async def delete_exchange(self, name: str, *, if_unused: bool = False) -> None:
        """Delete an exchange; with ``if_unused``, raise DeliveryFailed if it has bindings."""

    @abc.abstractmethod
    async def bind_queue(self, queue: str, exchange: str, routing_key: str) -> None: ...

    @abc.abstractmethod
    async def unbind_queue(self, queue: str, exchange: str, routing_key: str) -> None: ...

    @abc.abstractmethod
    async def publish(
        self, exchange: str, routing_key: str, message: OutgoingMessage, *, mandatory: bool
    ) -> None:
        """Publish and wait for the broker's confirm.

        Raises :class:`~kiwitrio.UnroutableError` if ``mandatory`` and no queue took it,
        :class:`~kiwitrio.DeliveryFailed` if the broker refused it or the connection failed
        before it confirmed.
        """

    @abc.abstractmethod
    async def get(self, queue: str) -> Delivery | None:
        """Fetch one message without consuming (``basic.get``); ``None`` if the queue is empty."""

    @abc.abstractmethod
    async def consume(self, queue: str, *, prefetch_count: int,
                      exclusive: bool = False) -> Consumer:
        """Start consuming ``queue`` with at most ``prefetch_count`` unsettled deliveries.

        ``exclusive``: as the only consumer of the queue (AMQP's exclusive consumer); no other
        connection can consume it meanwhile, and an exclusive consume of a queue that has
        consumers fails. Raises :class:`~kiwitrio.DeliveryFailed` (ACCESS_REFUSED) then.
        (``basic.get`` from elsewhere is not refused, as in RabbitMQ.)
        """

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close the connection. Unsettled deliveries go back to their queues. Idempotent."""

    async def wait_lost(self) -> BaseException:
        """Return (the reason) once the connection is lost by anything but :meth:`aclose`.

        The in-memory broker never loses its connection: this waits forever.
        """
        await trio.sleep_forever()
        raise AssertionError("unreachable")
