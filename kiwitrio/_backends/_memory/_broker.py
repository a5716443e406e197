"""The broker's state: exchanges, queues, bindings and messages, and what happens to them
(routing, dispatch to consumers, expiry, dead-lettering). Synchronous: sessions call it."""


from __future__ import annotations

import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, get_args

import trio

from ..._errors import DeliveryFailed
from .._base import (
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_ROUTING_KEY,
    EntityNotFound,
    ExchangeType,
    QueueSpec,
)
from ._entities import (
    _death_headers,
    _Exchange,
    _Message,
    _Outcome,
    _Queue,
    check_quorum_spec,
    refuses_more,
)
from ._routing import _binding_matches

if TYPE_CHECKING:
    from ._session import _MemorySession

__all__ = ["_PREDECLARED_EXCHANGES", "_PRODUCT", "_Broker", "_Message", "_Outcome", "_Queue"]

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
        """Dead-letter messages as they expire at the heads of their queues, and delete the
        queues that ``x-expires`` says are unused for too long."""
        while True:
            heads = [q.messages[0].expires_at for q in self.queues.values()
                     if q.messages and q.messages[0].expires_at is not None]
            unused = [at for q in self.queues.values() if (at := q.expires_at()) is not None]
            # Just past the deadline: a message expires strictly after it (see expired()).
            with trio.move_on_at(min(heads + unused) + 1e-6 if heads or unused else math.inf):
                await self._expiry_changed.wait()
            self._expiry_changed = trio.Event()
            now = trio.current_time()
            for queue in list(self.queues.values()):
                expires_at = queue.expires_at()
                if expires_at is not None and expires_at < now:
                    self.delete_queue(queue)
                else:
                    self.dispatch(queue, now)

    def use(self, queue: _Queue) -> None:
        """``queue`` was used (declared, fetched from, consumed or left by a consumer): its
        ``x-expires`` clock starts again."""
        queue.last_used = trio.current_time()
        if "x-expires" in queue.arguments:  # the expiry clock need not wake for the others
            self._expiry_changed.set()

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
        else:
            mismatch = existing.difference(kind, durable, auto_delete)
            if mismatch is not None:
                raise mismatch

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
        existing.check_access(session)
        mismatch = existing.difference(spec)
        if mismatch is not None:
            raise mismatch
        self.use(existing)
        return existing

    def _create_queue(self, name: str, spec: QueueSpec, session: _MemorySession) -> _Queue:
        check_quorum_spec(name, spec, server_named=not spec.name)
        queue = _Queue(
            name=name,
            durable=spec.durable,
            exclusive=spec.exclusive,
            auto_delete=spec.auto_delete,
            arguments=dict(spec.arguments),
            owner=session if spec.exclusive else None,
        )
        self.queues[name] = queue
        self.use(queue)
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
            raise EntityNotFound(f"NOT_FOUND: no queue {name!r}")
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

    def requeue(self, queue: _Queue, messages: Sequence[_Message], now: float) -> None:
        """Give ``messages`` back to the head of ``queue``, in order, flagged as redelivered.

        A quorum queue counts each return (``x-delivery-count``); a message returned more
        often than the queue's ``x-delivery-limit`` is dead-lettered instead, with the
        reason ``delivery_limit``, as RabbitMQ does.
        """
        back = []
        for message in messages:
            returned, over_limit = queue.returned(message)
            if over_limit:
                self.dead_letter(queue, returned, "delivery_limit", now)
            else:
                back.append(returned)
        queue.put_back(back)

    def dead_letter(self, queue: _Queue, message: _Message, reason: str, now: float) -> None:
        """Republish to the queue's dead-letter exchange, or drop the message if it has none.

        As in RabbitMQ, an unroutable dead letter, or one whose exchange is missing, is dropped
        silently (so is the copy for a full ``reject-publish`` queue), and the TTL is removed
        so that the letter does not expire again.
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
            if not refuses_more(target.arguments, len(target.messages)):
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
