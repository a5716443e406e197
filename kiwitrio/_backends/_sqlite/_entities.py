"""Exchanges, queues, bindings and connections in the database: declaring, checking,
deleting, and what goes when a connection dies (its consumers' messages back to their
queues, its exclusive queues, auto-delete queues it left without consumers).

Every function works inside a transaction (:class:`~._store.Tx`) and raises the same errors
as the other backends, so that a refusal rolls the whole transaction back.
"""

from __future__ import annotations

import secrets
import sqlite3
from typing import Any, get_args

from ..._errors import ConnectionFailed, DeliveryFailed
from .._base import EntityNotFound, ExchangeType, QueueInUse, QueueSpec, declaration_mismatch
from .._memory._broker import _SERVER_NAMED_PREFIX, _check_not_default, _check_not_reserved
from .._memory._entities import (
    DELIVERY_COUNT,
    DELIVERY_LIMIT,
    QUEUE_TYPE,
    _flag,
    _Queue,
    check_quorum_spec,
)
from . import _values
from ._doorbell import is_gone
from ._store import Tx

__all__ = [
    "DeclaredDead",
    "accessible_queue",
    "bind",
    "check_registered",
    "consumer_left",
    "declare_exchange",
    "declare_queue",
    "delete_exchange",
    "drop_connection",
    "drop_queue",
    "exchange_type",
    "expire_queues",
    "give_back_held",
    "heartbeat",
    "reap_connections",
    "reap_consumers_of",
    "register_connection",
    "unbind",
    "use_queue",
]

# -- exchanges --------------------------------------------------------------------------------


def declare_exchange(tx: Tx, name: str, kind: ExchangeType, *, durable: bool,
                     auto_delete: bool) -> None:
    """Create the exchange, or check that the existing one was declared the same way."""
    if kind not in get_args(ExchangeType):
        raise DeliveryFailed(f"COMMAND_INVALID: unknown exchange type {kind!r}")
    _check_not_default(name)
    row = tx.one("SELECT type, durable, auto_delete FROM exchanges WHERE name = ?", [name])
    if row is None:
        _check_not_reserved("exchange", name)
        tx.execute("INSERT INTO exchanges VALUES (?, ?, ?, ?)", [name, kind, durable, auto_delete])
        return
    for argument, current, received in [("type", row["type"], kind),
                                        ("durable", bool(row["durable"]), durable),
                                        ("auto_delete", bool(row["auto_delete"]), auto_delete)]:
        if current != received:
            raise declaration_mismatch("exchange", name, argument, _flag(current),
                                       _flag(received))


def exchange_type(tx: Tx, name: str) -> ExchangeType:
    """The type of a non-default exchange, or NOT_FOUND."""
    row = tx.one("SELECT type FROM exchanges WHERE name = ?", [name])
    if row is None:
        raise EntityNotFound(f"NOT_FOUND: no exchange {name!r}")
    kind: ExchangeType = row["type"]
    return kind


def delete_exchange(tx: Tx, name: str, *, if_unused: bool) -> None:
    """Delete an exchange and its bindings (a missing one is fine); with ``if_unused``, one
    that has bindings is refused (PRECONDITION_FAILED), as RabbitMQ does."""
    _check_not_default(name)
    _check_not_reserved("exchange", name)
    if if_unused and tx.one("SELECT 1 FROM bindings WHERE exchange = ?", [name]):
        raise DeliveryFailed(f"PRECONDITION_FAILED: exchange {name!r} in use")
    tx.execute("DELETE FROM bindings WHERE exchange = ?", [name])
    tx.execute("DELETE FROM exchanges WHERE name = ?", [name])


def _drop_unbound_auto_delete(tx: Tx, exchanges: set[str]) -> None:
    """An auto-delete exchange goes with its last binding."""
    for name in exchanges:
        tx.execute("DELETE FROM exchanges WHERE name = ? AND auto_delete AND NOT EXISTS "
                   "(SELECT 1 FROM bindings WHERE exchange = ?)", [name, name])


# -- queues -----------------------------------------------------------------------------------


def declare_queue(tx: Tx, spec: QueueSpec) -> str:
    """Create the queue (named here if ``spec.name`` is empty) or check the existing one."""
    if not spec.name:
        return _create_queue(tx, _SERVER_NAMED_PREFIX + secrets.token_urlsafe(16), spec)
    _check_not_reserved("queue", spec.name)
    row = _live_queue(tx, spec.name)
    if row is None:
        return _create_queue(tx, spec.name, spec)
    _check_access(row, tx)
    mismatch = _as_memory_queue(row).difference(spec)
    if mismatch is not None:
        raise mismatch
    use_queue(tx, spec.name)
    return spec.name


def _create_queue(tx: Tx, name: str, spec: QueueSpec) -> str:
    check_quorum_spec(name, spec, server_named=not spec.name)
    arguments = dict(spec.arguments)
    tx.execute("INSERT INTO queues VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [
        name, spec.durable, spec.exclusive, spec.auto_delete, _values.dumps(arguments),
        tx.me if spec.exclusive else None, _positive_int(arguments.get("x-expires")),
        _non_negative_int(arguments.get("x-message-ttl")), tx.now])
    return name


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _non_negative_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _as_memory_queue(row: sqlite3.Row) -> _Queue:
    """The row as the memory broker's queue, to compare declarations exactly as it does."""
    return _Queue(name=row["name"], durable=bool(row["durable"]),
                  exclusive=bool(row["exclusive"]), auto_delete=bool(row["auto_delete"]),
                  arguments=_values.loads(row["arguments"]), owner=None)


def _live_queue(tx: Tx, name: str) -> sqlite3.Row | None:
    """The queue's row; an exclusive queue whose owner is dead is dropped first (RabbitMQ
    deletes it when the owner's connection goes)."""
    row: sqlite3.Row | None = tx.one("SELECT * FROM queues WHERE name = ?", [name])
    if row is None or row["owner"] is None or row["owner"] == tx.me:
        return row
    if not _connection_alive(tx, row["owner"]):
        drop_connection(tx, row["owner"])
        row = tx.one("SELECT * FROM queues WHERE name = ?", [name])
    return row


def _check_access(row: sqlite3.Row, tx: Tx) -> None:
    if row["exclusive"] and row["owner"] != tx.me:
        raise QueueInUse(
            f"RESOURCE_LOCKED: queue {row['name']!r} is exclusive to another connection")


def accessible_queue(tx: Tx, name: str) -> sqlite3.Row:
    """The queue ``name`` if this connection may use it; NOT_FOUND or RESOURCE_LOCKED."""
    row = _live_queue(tx, name)
    if row is None:
        raise EntityNotFound(f"NOT_FOUND: no queue {name!r}")
    _check_access(row, tx)
    return row


def use_queue(tx: Tx, queue: str) -> None:
    """The queue was used (declared, fetched from, consumed, inspected, left by a consumer):
    its x-expires clock starts again."""
    tx.execute("UPDATE queues SET last_used = ? WHERE name = ?", [tx.now, queue])


def drop_queue(tx: Tx, name: str) -> int:
    """Delete a queue with its messages (not dead-lettered, as in RabbitMQ), consumers and
    bindings (possibly taking auto-delete exchanges); how many messages it held."""
    held = tx.one("SELECT count(*) FROM messages WHERE queue = ?", [name])[0]
    tx.execute("DELETE FROM messages WHERE queue = ?", [name])
    tx.notify.update(row[0] for row in tx.execute(
        "SELECT DISTINCT connection FROM consumers WHERE queue = ?", [name]))
    tx.execute("DELETE FROM consumers WHERE queue = ?", [name])
    exchanges = {row[0] for row in tx.execute(
        "SELECT DISTINCT exchange FROM bindings WHERE queue = ?", [name])}
    tx.execute("DELETE FROM bindings WHERE queue = ?", [name])
    _drop_unbound_auto_delete(tx, exchanges)
    tx.execute("DELETE FROM queues WHERE name = ?", [name])
    tx.touched.discard(name)
    return int(held)


def consumer_left(tx: Tx, queue: str) -> None:
    """After a consumer left: an auto-delete queue without consumers goes; otherwise the
    others may take what it gave back."""
    use_queue(tx, queue)
    row = tx.one("SELECT auto_delete FROM queues WHERE name = ?", [queue])
    if row is None:
        return
    if row["auto_delete"] and not tx.one("SELECT 1 FROM consumers WHERE queue = ?", [queue]):
        drop_queue(tx, queue)
    else:
        tx.touched.add(queue)


def expire_queues(tx: Tx) -> None:
    """Delete the queues that x-expires says were unused too long (no consumers meanwhile)."""
    expired = [row[0] for row in tx.execute(
        "SELECT name FROM queues q WHERE expires_ms IS NOT NULL "
        "AND last_used + expires_ms / 1000.0 < ? "
        "AND NOT EXISTS (SELECT 1 FROM consumers k WHERE k.queue = q.name)", [tx.now])]
    for name in expired:
        drop_queue(tx, name)


# -- bindings ---------------------------------------------------------------------------------


def bind(tx: Tx, queue: str, exchange: str, routing_key: str) -> None:
    accessible_queue(tx, queue)
    _check_not_default(exchange)
    exchange_type(tx, exchange)
    tx.execute("INSERT OR IGNORE INTO bindings VALUES (?, ?, ?)", [exchange, queue, routing_key])


def unbind(tx: Tx, queue: str, exchange: str, routing_key: str) -> None:
    """Remove a binding; removing one that does not exist is fine, as in RabbitMQ."""
    accessible_queue(tx, queue)
    _check_not_default(exchange)
    exchange_type(tx, exchange)
    tx.execute("DELETE FROM bindings WHERE exchange = ? AND queue = ? AND key = ?",
               [exchange, queue, routing_key])
    _drop_unbound_auto_delete(tx, {exchange})


# -- connections ------------------------------------------------------------------------------


def _connection_alive(tx: Tx, connection: str) -> bool:
    row = tx.one("SELECT heartbeat, bell FROM connections WHERE id = ?", [connection])
    return (row is not None and row["heartbeat"] >= tx.now - tx.liveness
            and not is_gone(row["bell"]))


def drop_connection(tx: Tx, connection: str) -> None:
    """What RabbitMQ does when a connection closes or dies: its unsettled messages go back to
    their queues (flagged redelivered), its consumers go (and auto-delete queues they leave
    empty), its exclusive queues are deleted."""
    requeued = {row[0] for row in tx.execute(
        "SELECT DISTINCT queue FROM messages WHERE holder = ?", [connection])}
    give_back_held(tx, "holder = ?", [connection])
    tx.touched.update(requeued)
    left = {row[0] for row in tx.execute(
        "SELECT DISTINCT queue FROM consumers WHERE connection = ?", [connection])}
    tx.execute("DELETE FROM consumers WHERE connection = ?", [connection])
    for (name,) in tx.execute("SELECT name FROM queues WHERE owner = ?", [connection]).fetchall():
        drop_queue(tx, name)
    for queue in left:
        consumer_left(tx, queue)
    tx.execute("DELETE FROM connections WHERE id = ?", [connection])


#: Marks a message returned more often than its quorum queue's ``x-delivery-limit``: it is
#: expired at once, and :func:`~._messages.expire_messages` dead-letters it for this reason.
DEATH_REASON_HEADER = "x-kiwitrio-death-reason"


def give_back_held(tx: Tx, condition: str, parameters: list[Any]) -> list[int]:
    """Return the held messages that ``condition`` selects to their queues, flagged as
    redelivered; returns the ids of those now past their delivery limit.

    A quorum queue counts each return in the message's ``x-delivery-count``, as RabbitMQ
    does; a message returned more often than the queue's ``x-delivery-limit`` expires at
    once, marked for dead-lettering with the reason ``delivery_limit``.
    """
    rows = tx.execute(f"SELECT id, queue, properties FROM messages WHERE {condition}",
                      parameters).fetchall()
    tx.execute("UPDATE messages SET holder = NULL, consumer = NULL, pushed = 0, "
               f"redelivered = 1 WHERE {condition}", parameters)
    past_limit = []
    for row in rows:
        arguments = _queue_arguments(tx, row["queue"])
        if arguments.get(QUEUE_TYPE) != "quorum":
            continue
        properties = _values.loads(row["properties"])
        headers = dict(properties.get("headers") or {})
        count = headers.get(DELIVERY_COUNT, 0)
        headers[DELIVERY_COUNT] = (count if type(count) is int else 0) + 1
        limit = arguments.get(DELIVERY_LIMIT)
        past = type(limit) is int and 0 <= limit < headers[DELIVERY_COUNT]
        if past:
            headers[DEATH_REASON_HEADER] = "delivery_limit"
            past_limit.append(int(row["id"]))
        properties["headers"] = headers
        tx.execute("UPDATE messages SET properties = ?, expires_at = CASE WHEN ? THEN ? "
                   "ELSE expires_at END WHERE id = ?",
                   [_values.dumps(properties), past, tx.now - 1, row["id"]])
    return past_limit


def _queue_arguments(tx: Tx, queue: str) -> dict[str, Any]:
    row = tx.one("SELECT arguments FROM queues WHERE name = ?", [queue])
    return {} if row is None else _values.loads(row["arguments"])


def reap_connections(tx: Tx, probe_after: float) -> None:
    """Drop the connections that are dead: silent for longer than the liveness timeout, or
    silent for ``probe_after`` seconds and with a doorbell nobody holds any more (the process
    is gone: the kernel closed its socket)."""
    rows = tx.execute("SELECT id, bell, heartbeat FROM connections WHERE id != ? "
                      "AND heartbeat < ?", [tx.me, tx.now - probe_after]).fetchall()
    for row in rows:
        if row["heartbeat"] < tx.now - tx.liveness or is_gone(row["bell"]):
            drop_connection(tx, row["id"])


def reap_consumers_of(tx: Tx, queue: str) -> None:
    """Drop the dead connections among those consuming ``queue`` (before refusing a consumer
    because of them: a restarted process takes its durable reply queue back at once)."""
    rows = tx.execute("SELECT DISTINCT c.id, c.bell, c.heartbeat FROM consumers k "
                      "JOIN connections c ON c.id = k.connection WHERE k.queue = ? "
                      "AND c.id != ?", [queue, tx.me]).fetchall()
    for row in rows:
        if row["heartbeat"] < tx.now - tx.liveness or is_gone(row["bell"]):
            drop_connection(tx, row["id"])
    # Consumers whose connection row is gone altogether (should not happen; be safe).
    tx.execute("DELETE FROM consumers WHERE queue = ? AND connection NOT IN "
               "(SELECT id FROM connections)", [queue])


def register_connection(tx: Tx, login: str, pid: int, bell: str) -> None:
    tx.execute("INSERT INTO connections VALUES (?, ?, ?, ?, ?)", [tx.me, login, pid, bell, tx.now])


class DeclaredDead(ConnectionFailed):
    """The other connections dropped this one's row: they found it silent past the liveness
    timeout, gave back what it held and deleted its exclusive queues."""


def check_registered(tx: Tx) -> None:
    """DeclaredDead if this connection's row is gone. Checked before taking messages or
    adding consumers: rows held by a connection that no longer exists would stay out of
    their queues until the next reaper noticed."""
    if tx.one("SELECT 1 FROM connections WHERE id = ?", [tx.me]) is None:
        raise DeclaredDead("the other connections to the sqlite file declared this one dead")


def heartbeat(tx: Tx) -> bool:
    """Renew this connection's heartbeat; False if others already declared it dead."""
    return tx.execute("UPDATE connections SET heartbeat = ? WHERE id = ?",
                      [tx.now, tx.me]).rowcount == 1

