"""Broadcasts: one-to-many, fire-and-forget messages with subject and sender filters.

Broadcasts go to the message exchange (a topic exchange) with the subject as routing key.
Each communicator with broadcast subscribers has one exclusive queue, bound with the union of
its subscribers' binding keys. A :class:`BroadcastFilter` on a subject gives a binding key
that matches a superset of what the filter accepts (``jobs.*`` binds ``jobs.#``), so the
broker drops most unwanted broadcasts before they cross the network, and the filter itself
decides exactly. Broadcasts are not persistent and expire after :data:`BROADCAST_TTL_MS`.

A broadcast routed to a subscriber's queue that is being deleted (its communicator just
closed or lost its connection) is nacked by RabbitMQ 4 although every other subscriber got it:
that is not a failure of the broadcast, and :meth:`BroadcastHub.send` returns normally.

Subscribers are called concurrently, several broadcasts at once. An *ordered* subscriber has
a queue of its own instead, filled in the order the broadcasts arrived and emptied by one task
that calls it with one broadcast at a time.
"""

from __future__ import annotations

import itertools
import logging
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import trio

from .. import _metrics, _tracing
from .._backends import (
    Consumer,
    Delivery,
    EntityNotFound,
    OutgoingMessage,
    QueueSpec,
    is_negative_ack,
)
from .._errors import DecodeError, DeliveryFailed, DuplicateSubscriberIdentifier
from .._saferepr import safe_repr
from . import _pipeline as pipeline
from ._context import Context
from ._invoke import call_subscriber, check_subscriber_signature

__all__ = ["BroadcastFilter", "BroadcastHub", "binding_keys"]

logger = logging.getLogger("kiwitrio.broadcasts")  # a public name (docs/configuration.md#logging)

BroadcastSubscriber = Callable[[Any, Any, Any, Any, Any], Any]

#: Broadcasts not consumed within this time are dropped by the broker (as in kiwiPy).
BROADCAST_TTL_MS = 66_000
BROADCAST_PREFETCH = 64
#: A str subject is the routing key, which AMQP limits to 255 bytes.
_MAX_ROUTING_KEY_BYTES = 255
#: Longest str sender of a broadcast, in characters (sent or received): filters run on it.
MAX_SENDER_LENGTH = 1024
# Broadcasts without a str subject travel under this routing key; every filtered binding also
# binds it, because a filter lets a broadcast without subject through (as kiwiPy's does).
_NO_SUBJECT_KEY = ""
_MATCH_ALL = "#"

_Matcher = Callable[[Any], bool]


def _matcher(pattern: Any) -> _Matcher:
    """A str with ``*`` (any run of characters), a compiled regex, or a value to compare."""
    if isinstance(pattern, str):
        if "*" not in pattern:
            return lambda value: value == pattern
        parts = pattern.split("*")
        return lambda value: isinstance(value, str) and _glob_match(parts, value)
    if isinstance(pattern, re.Pattern):
        return lambda value: isinstance(value, str) and pattern.match(value) is not None
    return lambda value: bool(value == pattern)


def _glob_match(parts: list[str], value: str) -> bool:
    """Whether ``value`` matches the ``*`` pattern split into ``parts`` (at least two).

    Linear in ``len(value)``: the first part must be a prefix and the last a suffix; each
    part between is looked for (``str.find``) after the previous one, and taking its first
    occurrence is never wrong, since a ``*`` absorbs whatever lies between. No backtracking:
    a regex ``.*a.*a.*b`` took 1.5 s on 2000 characters (and grows with the cube).
    """
    first, last = parts[0], parts[-1]
    if len(value) < len(first) + len(last):
        return False
    if not value.startswith(first) or not value.endswith(last):
        return False
    position, end = len(first), len(value) - len(last)
    for part in parts[1:-1]:
        if not part:
            continue
        found = value.find(part, position, end)
        if found < 0:
            return False
        position = found + len(part)
    return True


def _binding_key(pattern: Any) -> str:
    """A topic binding key that matches at least every subject ``pattern`` accepts."""
    if not isinstance(pattern, str):
        return _MATCH_ALL
    words = pattern.split(".")
    for index, word in enumerate(words):
        # '*' may span dots in a filter, so from the first word holding one on, anything goes.
        if "*" in word or "#" in word:
            return ".".join([*words[:index], _MATCH_ALL])
    return pattern


class BroadcastFilter:
    """Wraps a broadcast subscriber so that it only sees some broadcasts.

    ``subject`` and ``sender`` each take a str where ``*`` matches any run of characters
    (``"state_changed.*"``), a compiled regex (matched at the start), or any other value
    compared with ``==``. Several filters of one kind (:meth:`add_subject_filter`) accept a
    broadcast if any matches. As in kiwiPy, a broadcast whose subject (or sender) is ``None``
    is not filtered on it.
    """

    def __init__(self, subscriber: BroadcastSubscriber, subject: Any = None,
                 sender: Any = None) -> None:
        self._subscriber = subscriber
        self._subscribed = False
        self._subject_patterns: list[Any] = []
        self._subject_filters: list[_Matcher] = []
        self._sender_filters: list[_Matcher] = []
        if subject is not None:
            self.add_subject_filter(subject)
        if sender is not None:
            self.add_sender_filter(sender)

    @property
    def subscriber(self) -> BroadcastSubscriber:
        return self._subscriber

    def with_subscriber(self, subscriber: BroadcastSubscriber) -> BroadcastFilter:
        """A copy of this filter (same filters) around another subscriber."""
        copy = BroadcastFilter(subscriber)
        copy._subject_patterns = list(self._subject_patterns)
        copy._subject_filters = list(self._subject_filters)
        copy._sender_filters = list(self._sender_filters)
        return copy

    def add_subject_filter(self, subject_filter: Any) -> None:
        """Also accept subjects matching ``subject_filter``. Only before subscribing: the
        broker's bindings are made from the filters at that moment."""
        self._check_not_subscribed()
        self._subject_patterns.append(subject_filter)
        self._subject_filters.append(_matcher(subject_filter))

    def add_sender_filter(self, sender_filter: Any) -> None:
        """Also accept senders matching ``sender_filter`` (only before subscribing)."""
        self._check_not_subscribed()
        self._sender_filters.append(_matcher(sender_filter))

    def freeze(self) -> None:
        """Fix the filters, as subscribing does (later ``add_*_filter`` calls raise): for a
        front end that subscribes a wrapper of this filter in its place."""
        self._subscribed = True

    def _check_not_subscribed(self) -> None:
        if self._subscribed:
            raise RuntimeError(
                "add filters before add_broadcast_subscriber(): the broker routes by the "
                "filters the subscriber had then; subscribe a new BroadcastFilter instead"
            )

    def is_filtered(self, sender: Any, subject: Any) -> bool:
        """True if this filter keeps the broadcast away from the subscriber."""
        return _rejects(self._subject_filters, subject) or _rejects(self._sender_filters, sender)

    def binding_keys(self) -> set[str]:
        if not self._subject_patterns:
            return {_MATCH_ALL}
        return {_NO_SUBJECT_KEY, *(_binding_key(p) for p in self._subject_patterns)}

    def __call__(self, communicator: Any, body: Any, sender: Any = None, subject: Any = None,
                 correlation_id: Any = None) -> Any:
        if self.is_filtered(sender, subject):
            return None
        return self._subscriber(communicator, body, sender, subject, correlation_id)


def _rejects(filters: list[_Matcher], value: Any) -> bool:
    return value is not None and bool(filters) and not any(f(value) for f in filters)


def check_broadcast_subscriber(subscriber: BroadcastSubscriber) -> None:
    """TypeError now if ``subscriber`` (or the one a filter wraps) has the wrong signature."""
    # A filter itself takes anything; what matters is what it hands the broadcast on to.
    while isinstance(subscriber, BroadcastFilter):
        subscriber = subscriber.subscriber
    check_subscriber_signature(subscriber, "broadcast")


def binding_keys(subscriber: BroadcastSubscriber) -> set[str]:
    if isinstance(subscriber, BroadcastFilter):
        return subscriber.binding_keys()
    return {_MATCH_ALL}


class BroadcastHub:
    """The broadcast subscribers of one communicator, and sending broadcasts."""

    def __init__(self, ctx: Context, *, exchange: str) -> None:
        self._ctx = ctx
        self._exchange = exchange
        self._subscribers: dict[Any, BroadcastSubscriber] = {}
        # The binding keys each subscriber was bound with, to unbind exactly those.
        self._keys: dict[Any, set[str]] = {}
        self._bindings: Counter[str] = Counter()
        #: The ordered subscribers' own queues (filled by _dispatch, in arrival order).
        self._ordered: dict[Any, _OrderedFeed] = {}
        self._queue: str | None = None
        self._lock = trio.Lock()
        self._ids = itertools.count()

    async def send(self, body: Any, sender: Any = None, subject: Any = None,
                   correlation_id: Any = None) -> None:
        self._ctx.check_open()
        routing_key = subject if isinstance(subject, str) else _NO_SUBJECT_KEY
        if len(routing_key.encode()) > _MAX_ROUTING_KEY_BYTES:
            raise ValueError(f"a broadcast subject must be at most {_MAX_ROUTING_KEY_BYTES} bytes")
        if isinstance(sender, str) and len(sender) > MAX_SENDER_LENGTH:
            raise ValueError(f"a broadcast sender must be at most {MAX_SENDER_LENGTH} characters")
        envelope = {"body": body, "sender": sender, "subject": subject,
                    "correlation_id": correlation_id}
        encoded = self._ctx.encode(envelope)
        started = _metrics.now()
        try:
            with _tracing.sending("broadcast", routing_key, destination=self._exchange,
                                  routing_key=routing_key) as headers:
                await self._publish(routing_key, OutgoingMessage(
                    encoded, self._ctx.content_type, headers=headers,
                    expiration_ms=BROADCAST_TTL_MS))
            _metrics.record_sent("broadcast", started)
        except DeliveryFailed as exc:
            if not is_negative_ack(exc):
                raise
            # Some queue it was routed to did not take it (RabbitMQ 4: one being deleted);
            # the others did. A subscriber that is going away missing it is no failure.
            logger.info("broadcast %r was nacked by the broker (a subscriber's queue was being "
                        "deleted); the other subscribers have it: %s", subject, exc)

    async def _publish(self, routing_key: str, message: OutgoingMessage) -> None:
        try:
            await self._ctx.session.publish(self._exchange, routing_key, message,
                                            mandatory=False)
        except EntityNotFound:
            # The exchange went (auto-delete in testing mode, or deleted by hand): declare it
            # again, once, and retry.
            if self._ctx.redeclare_exchanges is None:
                raise
            await self._ctx.redeclare_exchanges()
            await self._ctx.session.publish(self._exchange, routing_key, message,
                                            mandatory=False)

    async def add(self, subscriber: BroadcastSubscriber, identifier: Any = None, *,
                  ordered: bool = False) -> Any:
        self._ctx.check_open()
        check_broadcast_subscriber(subscriber)
        if identifier is None:
            identifier = f"broadcast-subscriber-{next(self._ids)}"
        async with self._lock:
            if identifier in self._subscribers:
                raise DuplicateSubscriberIdentifier(f"broadcast subscriber {identifier!r} exists")
            queue = self._queue or await self._open()
            keys = binding_keys(subscriber)
            await self._bind(queue, keys)
            if isinstance(subscriber, BroadcastFilter):
                subscriber.freeze()
            if ordered:
                feed = _OrderedFeed(subscriber)
                self._ordered[identifier] = feed
                self._ctx.nursery.start_soon(self._feed, feed,
                                             name=f"kiwitrio broadcasts to {identifier!r}")
            else:
                self._subscribers[identifier] = subscriber
            self._keys[identifier] = keys
        return identifier

    async def remove(self, identifier: Any) -> None:
        self._ctx.check_open()
        async with self._lock:
            subscriber = self._subscribers.pop(identifier, None)
            feed = self._ordered.pop(identifier, None)
            if subscriber is None and feed is None:
                raise ValueError(f"no broadcast subscriber {identifier!r}")
            if feed is not None:
                feed.stop()  # broadcasts still waiting for it are dropped
            keys = self._keys.pop(identifier)
            if self._queue is not None:
                await self._unbind(self._queue, keys)

    async def _open(self) -> str:
        session = self._ctx.session
        # Named by us, so that it can be declared again after a reconnection.
        name = f"{self._exchange}.broadcast.{uuid.uuid4().hex}"
        self._queue = await session.declare_queue(
            QueueSpec(name, exclusive=True, auto_delete=True, renamable=True))
        consumer = await session.consume(self._queue, prefetch_count=BROADCAST_PREFETCH)
        self._ctx.nursery.start_soon(self._dispatch, consumer, name="kiwitrio broadcasts")
        return self._queue

    async def _bind(self, queue: str, keys: Iterable[str]) -> None:
        for key in keys:
            if self._bindings[key] == 0:
                try:
                    await self._ctx.session.bind_queue(queue, self._exchange, key)
                except EntityNotFound:
                    if self._ctx.redeclare_exchanges is None:
                        raise
                    await self._ctx.redeclare_exchanges()  # it went; see send()
                    await self._ctx.session.bind_queue(queue, self._exchange, key)
            self._bindings[key] += 1

    async def _unbind(self, queue: str, keys: Iterable[str]) -> None:
        for key in keys:
            self._bindings[key] -= 1
            if self._bindings[key] == 0:
                del self._bindings[key]
                await self._ctx.session.unbind_queue(queue, self._exchange, key)

    async def _dispatch(self, consumer: Consumer) -> None:
        # Decoded in arrival order, for the ordered subscribers (the handlers run in any).
        await pipeline.serve(self._ctx, consumer, "broadcast", self._handle, self._reject,
                             parse=_parse_envelope, in_order=self._feed_ordered)

    async def _reject(self, delivery: Delivery, exc: DecodeError) -> None:
        await self._ctx.reject_visibly(delivery, "broadcast", exc)

    async def _feed_ordered(self, delivery: Delivery, envelope: dict[str, Any]) -> None:
        for feed in list(self._ordered.values()):
            await feed.put(envelope, delivery)

    async def _feed(self, feed: _OrderedFeed) -> None:
        with feed.scope:
            async for envelope, delivery in feed.receive:
                await self._call(feed.subscriber, envelope, delivery)

    async def _handle(self, delivery: Delivery, envelope: dict[str, Any]) -> None:
        async with trio.open_nursery() as calls:
            for subscriber in list(self._subscribers.values()):
                calls.start_soon(self._call, subscriber, envelope, delivery)
        await delivery.ack()

    async def _call(self, subscriber: BroadcastSubscriber, envelope: dict[str, Any],
                    delivery: Delivery) -> None:
        """Call ``subscriber`` with the broadcast ``envelope`` (which came in ``delivery``);
        it logs what the subscriber raises. Cancelled with the caller."""
        started = _metrics.now()
        try:
            # The filter too: it sees the sender's values (a regex filter, an == filter).
            if isinstance(subscriber, BroadcastFilter):
                if subscriber.is_filtered(envelope["sender"], envelope["subject"]):
                    return
                subscriber = subscriber.subscriber
            # The routing key: the subject, if it is a string (the sender sets it so).
            with _tracing.processing("broadcast", delivery.routing_key,
                                     destination=delivery.exchange, headers=delivery.headers):
                await call_subscriber(subscriber, self._ctx.communicator, envelope["body"],
                                      envelope["sender"], envelope["subject"],
                                      envelope["correlation_id"])
            _metrics.record_handled("broadcast", "done", started)
        except Exception:
            logger.exception("broadcast subscriber %r raised", subscriber)
            _metrics.record_handled("broadcast", "failed", started)


class _OrderedFeed:
    """An ordered subscriber's queue of broadcasts."""

    def __init__(self, subscriber: BroadcastSubscriber) -> None:
        self.subscriber = subscriber
        # A broadcast's envelope and the delivery it came in (which has its trace context).
        self._send, self.receive = trio.open_memory_channel[tuple[dict[str, Any], Delivery]](
            BROADCAST_PREFETCH)
        self.scope = trio.CancelScope()

    async def put(self, envelope: dict[str, Any], delivery: Delivery) -> None:
        try:
            await self._send.send((envelope, delivery))
        except trio.ClosedResourceError:
            pass  # removed meanwhile

    def stop(self) -> None:
        self._send.close()
        self.scope.cancel()


def _parse_envelope(envelope: Any) -> dict[str, Any]:
    if not isinstance(envelope, dict) or "body" not in envelope:
        raise DecodeError(f"not a broadcast envelope: {safe_repr(envelope)}")
    parsed = {key: envelope.get(key) for key in ("body", "sender", "subject", "correlation_id")}
    # The limits a sender's broadcast_send enforces: filters (a user's regex, too) run on
    # these, so an envelope made by hand must not carry longer ones.
    subject, sender = parsed["subject"], parsed["sender"]
    if isinstance(subject, str) and (len(subject) > _MAX_ROUTING_KEY_BYTES
                                     or len(subject.encode()) > _MAX_ROUTING_KEY_BYTES):
        raise DecodeError(f"a broadcast subject of {len(subject)} characters: more than "
                          f"{_MAX_ROUTING_KEY_BYTES} bytes")
    if isinstance(sender, str) and len(sender) > MAX_SENDER_LENGTH:
        raise DecodeError(f"a broadcast sender of {len(sender)} characters: more than "
                          f"{MAX_SENDER_LENGTH}")
    return parsed
