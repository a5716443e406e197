"""Messages in the database: routing a publish, handing ready messages to a consumer
(claiming them for its connection), settling them, expiry and dead-lettering.

Every function works inside a transaction (:class:`~._store.Tx`). A message row with a
``holder`` is out with that connection and nobody else's: a claim is an UPDATE of ready rows
inside the write lock, so no two consumers ever hold one message.

A queue whose only consumer is one nobody else could compete with (an exclusive queue's, or
an exclusive consumer: RPC, reply and broadcast queues) gets its transient messages delivered
by the publish itself: the row is stored held by that consumer's connection and marked ``pushed``,
and the consumer reads it (:func:`read_pushed`) instead of claiming it, which saves a write
transaction on each side of an RPC. To the rest of the broker a pushed row is a delivered one:
it does not count as ready, does not expire, and goes back to its queue (flagged redelivered)
if the connection dies. The consumer reads its pushed rows in id order, as many as it has
room for, and remembers the last id it read: ids grow in commit order (writers take turns),
so a read never misses an earlier one. Those it has not read go back unflagged
(:func:`unpush`) when it is cancelled, and when one of its messages is requeued, so that
they stay behind it in queue order; for the same reason a publish pushes only into a queue
with no ready message. Persistent messages (tasks, task results) are not pushed: their
consumers' claims share commits with other work under load (group commit), and the cut that
pushed task results too lost task throughput (benchmarks/results/sqlite/ab-8-pushed.md); the
RPC path, which the change is for, is transient.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from ..._errors import DeliveryFailed, UnroutableError
from .._base import DEAD_LETTER_EXCHANGE, DEAD_LETTER_ROUTING_KEY, OutgoingMessage
from .._memory._entities import _death_headers, _Message, refuses_more
from .._memory._routing import _binding_matches
from . import _values
from ._doorbell import is_gone
from ._entities import (
    DEATH_REASON_HEADER,
    accessible_queue,
    check_registered,
    drop_connection,
    exchange_type,
    give_back_held,
)
from ._store import Tx

__all__ = ["Stored", "claim", "claim_for_consumer", "consumers_with_ready", "dead_letter",
           "expire_messages", "publish", "read_pushed", "settle", "unpush"]


@dataclass(frozen=True)
class Stored:
    """A message row handed out to this connection."""

    id: int
    queue: str
    body: bytes
    redelivered: bool
    properties: Mapping[str, Any]
    #: Pushed to its consumer and read only after its time to live ran out.
    expired: bool = False


def _properties(exchange: str, routing_key: str, message: OutgoingMessage,
                user_id: str | None) -> dict[str, Any]:
    return {"content_type": message.content_type, "correlation_id": message.correlation_id,
            "reply_to": message.reply_to, "headers": dict(message.headers),
            "exchange": exchange, "routing_key": routing_key, "user_id": user_id,
            "expiration_ms": message.expiration_ms}


def _route(tx: Tx, exchange: str, routing_key: str) -> list[str]:
    """The queues a message goes to, each once however many of its bindings match."""
    if exchange == "":
        # The default exchange is implicitly bound to every queue by the queue's name.
        found = tx.one("SELECT name FROM queues WHERE name = ?", [routing_key])
        return [] if found is None else [routing_key]
    kind = exchange_type(tx, exchange)
    rows = tx.execute("SELECT queue, key FROM bindings WHERE exchange = ? ORDER BY rowid",
                      [exchange])
    return list(dict.fromkeys(row["queue"] for row in rows
                              if _binding_matches(kind, row["key"], routing_key)))


def _live_targets(tx: Tx, exchange: str, routing_key: str) -> list[str]:
    """:func:`_route`, after dropping dead owners of exclusive target queues: a message for an
    RPC subscriber whose process died is unroutable at once, not stored for nobody."""
    targets = _route(tx, exchange, routing_key)
    if not targets:
        return targets
    marks = ",".join("?" * len(targets))
    owners = tx.execute(
        f"SELECT DISTINCT q.owner, c.heartbeat, c.bell FROM queues q LEFT JOIN connections c "
        f"ON c.id = q.owner WHERE q.name IN ({marks}) AND q.owner IS NOT NULL "
        f"AND q.owner != ?", [*targets, tx.me]).fetchall()
    dead = [row["owner"] for row in owners if row["heartbeat"] is None
            or row["heartbeat"] < tx.now - tx.liveness or is_gone(row["bell"])]
    for owner in dead:
        drop_connection(tx, owner)
    return _route(tx, exchange, routing_key) if dead else targets


def publish(tx: Tx, exchange: str, routing_key: str, message: OutgoingMessage, *,
            mandatory: bool, user_id: str | None) -> list[str]:
    """Store a copy in every queue the message routes to; UnroutableError (and nothing
    stored) if ``mandatory`` and there is none. Returns the full ``reject-publish`` queues
    that refused it (the caller raises once the others' copies are committed)."""
    if message.expiration_ms is not None and message.expiration_ms < 0:
        raise DeliveryFailed("PRECONDITION_FAILED: negative expiration")
    targets = _live_targets(tx, exchange, routing_key)
    if mandatory and not targets:
        raise UnroutableError(f"no queue for routing key {routing_key!r} on {exchange!r}")
    return _store(tx, targets, message.body,
                  _properties(exchange, routing_key, message, user_id), message.expiration_ms,
                  pushable=not message.persistent)


def _store(tx: Tx, queues: list[str], body: bytes, properties: Mapping[str, Any],
           expiration_ms: int | None, *, pushable: bool = False) -> list[str]:
    """Store a copy in each queue that takes it; the full ones that refused it.
    ``pushable``: to a sole consumer, deliver it by this publish (see the module's
    docstring)."""
    text = _values.dumps(properties)
    full: list[str] = []
    for queue in queues:
        row, sole = _target(tx, queue, pushable=pushable)
        if _is_full(tx, queue, row["arguments"]):
            full.append(queue)
            continue
        # The queue's TTL and the message's own: whichever ends first.
        ttls = [ttl for ttl in (expiration_ms, row["message_ttl_ms"]) if ttl is not None]
        expires_at = tx.now + min(ttls) / 1000 if ttls else None
        if sole is not None:
            tx.execute("INSERT INTO messages (queue, body, properties, expires_at, holder, "
                       "consumer, pushed) VALUES (?, ?, ?, ?, ?, ?, 1)",
                       [queue, body, text, expires_at, sole["connection"], sole["consumer"]])
            tx.pushed[sole["consumer"]] = sole["connection"]
        else:
            tx.execute("INSERT INTO messages (queue, body, properties, expires_at) "
                       "VALUES (?, ?, ?, ?)", [queue, body, text, expires_at])
            tx.touched.add(queue)
    return full


def _target(tx: Tx, queue: str, *, pushable: bool) -> tuple[sqlite3.Row, sqlite3.Row | None]:
    """A target queue's row, and the row naming the sole consumer a publish delivers to
    (``None``: the message is stored ready). Only a pushable publish looks at consumers:
    the others (tasks, results: most publishes) take the plain lookup."""
    if not pushable:
        return tx.one(_QUEUE, [queue]), None
    # Two consumer rows are enough to tell that there is no sole one.
    rows = tx.execute(_QUEUE_AND_CONSUMERS, [queue]).fetchall()
    sole = len(rows) == 1 and rows[0]["sole"] and rows[0]["empty"]
    return rows[0], rows[0] if sole else None


_QUEUE = "SELECT message_ttl_ms, arguments FROM queues WHERE name = ?"
#: A queue's row with each of its first two consumers (one row with NULLs if it has none);
#: ``sole``: that consumer is one nobody else could compete with; ``empty``: no ready
#: message is ahead of a new one (a pushed one must not overtake them).
_QUEUE_AND_CONSUMERS = (
    "SELECT q.message_ttl_ms, q.arguments, k.id AS consumer, k.connection, "
    "(k.exclusive OR q.exclusive) AS sole, NOT EXISTS (SELECT 1 FROM messages m "
    "WHERE m.queue = q.name AND m.holder IS NULL) AS empty FROM queues q "
    "LEFT JOIN consumers k ON k.queue = q.name WHERE q.name = ? LIMIT 2")


def _is_full(tx: Tx, queue: str, arguments_text: str) -> bool:
    """``x-max-length`` with ``x-overflow: reject-publish`` reached (ready messages count)."""
    if "x-max-length" not in arguments_text:  # most queues: no need to decode or count
        return False
    arguments = _values.loads(arguments_text)
    if arguments.get("x-overflow") != "reject-publish":
        return False
    ready = tx.one("SELECT count(*) FROM messages WHERE queue = ? AND holder IS NULL", [queue])
    return refuses_more(arguments, int(ready[0]))


#: Hand ready messages to this connection; ``{guard}``: a further condition, and its values
#: go before the LIMIT's.
_CLAIM = ("UPDATE messages SET holder = ?, consumer = ? WHERE id IN (SELECT id FROM messages "
          "WHERE queue = ? AND holder IS NULL AND (expires_at IS NULL OR expires_at >= ?) "
          "{guard}ORDER BY id LIMIT ?) RETURNING id, queue, body, redelivered, properties")
_PLAIN_CLAIM = _CLAIM.format(guard="")
_REGISTERED_CLAIM = _CLAIM.format(
    guard="AND EXISTS (SELECT 1 FROM consumers WHERE id = ? AND connection = ?) ")


def _claimed(tx: Tx, sql: str, params: list[Any]) -> list[Stored]:
    rows = tx.execute(sql, params).fetchall()
    rows.sort(key=lambda row: int(row["id"]))  # RETURNING gives no order
    return [_stored(row) for row in rows]


def claim(tx: Tx, queue: str, consumer: str | None, limit: int) -> list[Stored]:
    """Hand up to ``limit`` ready messages of ``queue``, oldest first, to this connection
    (for ``consumer``, or for a ``basic.get`` if ``None``). Expired ones are left for
    :func:`expire_messages`."""
    return _claimed(tx, _PLAIN_CLAIM, [tx.me, consumer, queue, tx.now, limit])


def claim_for_consumer(tx: Tx, consumer: str, queue: str, limit: int) -> list[Stored] | None:
    """:func:`claim` for ``consumer`` (of this connection, on ``queue``), in one statement
    while it is registered; ``None`` if it is gone (its queue was deleted), DeclaredDead if
    this connection is (its consumers went with it). A claim is on every call's path: the
    checks only run when it took nothing."""
    got = _claimed(tx, _REGISTERED_CLAIM,
                   [tx.me, consumer, queue, tx.now, consumer, tx.me, limit])
    if not got:
        check_registered(tx)
        if tx.one("SELECT 1 FROM consumers WHERE id = ?", [consumer]) is None:
            return None
    return got


def consumers_with_ready(tx: Tx, consumers: list[str]) -> tuple[set[str], set[str]]:
    """Read-only: which of these consumers' queues have a ready message, and which of the
    consumers are gone (their queue was deleted, or their connection declared dead)."""
    marks = ",".join("?" * len(consumers))
    rows = tx.execute(
        "SELECT k.id, EXISTS (SELECT 1 FROM messages m WHERE m.queue = k.queue AND "
        "m.holder IS NULL AND (m.expires_at IS NULL OR m.expires_at >= ?)) FROM consumers k "
        f"WHERE k.id IN ({marks})", [tx.now, *consumers]).fetchall()
    ready = {row[0] for row in rows if row[1]}
    return ready, set(consumers) - {row[0] for row in rows}


def read_pushed(tx: Tx, after: Mapping[str, tuple[int, int]]) -> dict[str, list[Stored]]:
    """Read-only: for each consumer (id: (the last pushed id it read, its room)), the messages
    pushed to it since, oldest first, at most its room. Each stored's ``expired`` says
    whether its time to live ran out before it was read (see :func:`unpush`).

    One statement for all of them: in autocommit each statement is a read transaction of its
    own, which first catches up with what the other processes wrote (about 0.2 ms here)."""
    found: dict[str, list[Stored]] = {}
    if not after:
        return found
    marks = ",".join("?" * len(after))
    # The ids a consumer read already are few: it holds at most its prefetch count.
    for row in tx.execute(
            "SELECT id, queue, body, redelivered, properties, expires_at, consumer "
            f"FROM messages WHERE holder = ? AND pushed = 1 AND consumer IN ({marks}) "
            "ORDER BY id", [tx.me, *after]):
        last, room = after[row["consumer"]]
        taken = found.setdefault(row["consumer"], [])
        if row["id"] > last and len(taken) < room:
            taken.append(replace(_stored(row), expired=row["expires_at"] is not None
                                 and row["expires_at"] < tx.now))
    return {consumer: taken for consumer, taken in found.items() if taken}


def unpush(tx: Tx, consumer: str, *, after: int = -1, ids: list[int] | None = None) -> None:
    """Hand the messages pushed to ``consumer`` and not read by it (those after the id
    ``after``, or just ``ids``) back to their queue as never delivered, and expire those past
    their time to live."""
    condition = "holder = ? AND consumer = ? AND pushed = 1"
    parameters: list[Any] = [tx.me, consumer]
    if ids is None:
        condition += " AND id > ?"
        parameters.append(after)
    else:
        condition += f" AND id IN ({','.join('?' * len(ids))})"
        parameters.extend(ids)
    queues = [row[0] for row in tx.execute(
        f"UPDATE messages SET holder = NULL, consumer = NULL, pushed = 0 WHERE {condition} "
        "RETURNING queue", parameters)]
    if queues:
        tx.touched.update(queues)
        expire_messages(tx)


def _stored(row: sqlite3.Row) -> Stored:
    return Stored(id=row["id"], queue=row["queue"], body=bytes(row["body"]),
                  redelivered=bool(row["redelivered"]),
                  properties=_values.loads(row["properties"]))


def settle(tx: Tx, message_id: int, outcome: str) -> None:
    """Ack (delete), requeue, or dead-letter a message this connection holds; nothing if it
    does not hold it any more (it was requeued when the connection was declared dead)."""
    if outcome == "requeue":
        row = tx.one("SELECT queue FROM messages WHERE id = ? AND holder = ?",
                     [message_id, tx.me])
        if row is not None:
            if give_back_held(tx, "id = ? AND holder = ?", [message_id, tx.me]):
                expire_messages(tx)  # past its delivery limit: dead-lettered now
            tx.touched.add(row["queue"])
        return
    row = tx.one("DELETE FROM messages WHERE id = ? AND holder = ? "
                 "RETURNING id, queue, body, redelivered, properties", [message_id, tx.me])
    if row is not None and outcome == "dead-letter":
        dead_letter(tx, _stored(row), "rejected")


def requeue_many(tx: Tx, message_ids: list[int]) -> None:
    for message_id in message_ids:
        settle(tx, message_id, "requeue")


def dead_letter(tx: Tx, message: Stored, reason: str) -> None:
    """Republish to the queue's dead-letter exchange, or drop the message if it has none.

    As in RabbitMQ, a dead letter whose exchange is missing or that routes nowhere is
    dropped silently (so is the copy for a full ``reject-publish`` queue), and its TTL is
    removed so that it does not expire again.
    """
    row = tx.one("SELECT arguments FROM queues WHERE name = ?", [message.queue])
    arguments = {} if row is None else _values.loads(row["arguments"])
    if DEAD_LETTER_EXCHANGE not in arguments:
        return
    exchange = str(arguments[DEAD_LETTER_EXCHANGE])
    if exchange and tx.one("SELECT 1 FROM exchanges WHERE name = ?", [exchange]) is None:
        return
    properties = dict(message.properties)
    routing_key = str(arguments.get(DEAD_LETTER_ROUTING_KEY, properties["routing_key"]))
    as_memory = _Message(
        body=b"", content_type=None, correlation_id=None, reply_to=None,
        headers=properties["headers"], exchange=properties["exchange"],
        routing_key=properties["routing_key"], expiration_ms=properties["expiration_ms"])
    properties.update(headers=_death_headers(as_memory, message.queue, reason),
                      exchange=exchange, routing_key=routing_key, expiration_ms=None)
    _store(tx, _route(tx, exchange, routing_key), message.body, properties, None)


def expire_messages(tx: Tx) -> None:
    """Dead-letter (or drop) the ready messages whose time to live is over."""
    rows = tx.execute(
        "DELETE FROM messages WHERE holder IS NULL AND expires_at IS NOT NULL "
        "AND expires_at < ? RETURNING id, queue, body, redelivered, properties",
        [tx.now]).fetchall()
    rows.sort(key=lambda row: int(row["id"]))
    for row in rows:
        stored = _stored(row)
        headers = dict(stored.properties["headers"])
        reason = headers.pop(DEATH_REASON_HEADER, "expired")  # see give_back_held
        dead_letter(tx, replace(stored, properties={**stored.properties, "headers": headers}),
                    str(reason))


def next_expiry(tx: Tx) -> float | None:
    """When the next ready message expires (wall clock), if any does."""
    row = tx.one("SELECT min(expires_at) FROM messages WHERE holder IS NULL "
                 "AND expires_at IS NOT NULL")
    return None if row is None or row[0] is None else float(row[0])


def queue_counts(tx: Tx, queue: str) -> tuple[int, int]:
    """Ready messages and consumers of a queue this connection may see."""
    accessible_queue(tx, queue)
    ready = tx.one("SELECT count(*) FROM messages WHERE queue = ? AND holder IS NULL", [queue])
    consumers = tx.one("SELECT count(*) FROM consumers WHERE queue = ?", [queue])
    return int(ready[0]), int(consumers[0])
