"""The database file: its tables, its version, and opening it (WAL, checked at open).

The version lives in SQLite's ``user_version``. A file written by another schema version is
refused with :class:`SchemaMismatch` rather than used: the layout is a compatibility promise,
as a durable queue's arguments are on RabbitMQ.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from ..._errors import ConnectionRefusedByBroker
from .._memory._broker import _PREDECLARED_EXCHANGES

__all__ = ["SCHEMA_VERSION", "SchemaMismatch", "connect", "pragma"]

#: Bump on any change to the tables below (and say in the CHANGELOG how to migrate).
SCHEMA_VERSION = 2

#: Tables, in one script so that a new file gets all of them or none.
_TABLES = """
CREATE TABLE connections (
    id TEXT PRIMARY KEY, login TEXT NOT NULL, pid INTEGER NOT NULL,
    bell TEXT NOT NULL, heartbeat REAL NOT NULL);
CREATE TABLE exchanges (
    name TEXT PRIMARY KEY, type TEXT NOT NULL, durable INTEGER NOT NULL,
    auto_delete INTEGER NOT NULL);
CREATE TABLE queues (
    name TEXT PRIMARY KEY, durable INTEGER NOT NULL, exclusive INTEGER NOT NULL,
    auto_delete INTEGER NOT NULL, arguments TEXT NOT NULL,
    owner TEXT,                 -- the connection an exclusive queue belongs to
    expires_ms INTEGER,         -- x-expires
    message_ttl_ms INTEGER,     -- x-message-ttl
    last_used REAL NOT NULL);   -- wall clock: x-expires counts from it
CREATE TABLE bindings (
    exchange TEXT NOT NULL, queue TEXT NOT NULL, key TEXT NOT NULL,
    PRIMARY KEY (exchange, queue, key));
CREATE INDEX bindings_by_queue ON bindings (queue);
CREATE TABLE consumers (
    id TEXT PRIMARY KEY, connection TEXT NOT NULL, queue TEXT NOT NULL,
    exclusive INTEGER NOT NULL);
CREATE INDEX consumers_by_queue ON consumers (queue);
CREATE INDEX consumers_by_connection ON consumers (connection);
CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- queue order: never reused
    queue TEXT NOT NULL, body BLOB NOT NULL, properties TEXT NOT NULL,
    redelivered INTEGER NOT NULL DEFAULT 0,
    expires_at REAL,            -- wall clock
    holder TEXT,                -- the connection it is delivered to, NULL when ready
    consumer TEXT,              -- its consumer there (NULL for basic.get)
    pushed INTEGER NOT NULL DEFAULT 0);  -- delivered by its publish (see _messages)
CREATE INDEX messages_ready ON messages (queue, holder, id);
CREATE INDEX messages_by_holder ON messages (holder) WHERE holder IS NOT NULL;
CREATE INDEX messages_by_expiry ON messages (expires_at) WHERE expires_at IS NOT NULL;
"""


class SchemaMismatch(ConnectionRefusedByBroker):
    """The database file was written by another version of kiwitrio's sqlite schema (or is
    not a kiwitrio database at all).

    A refusal (a ConnectionFailed): trying again would get the same answer, so a
    communicator's first connection is not retried."""


def connect(path: str, *, synchronous: str) -> sqlite3.Connection:
    """Open (creating if need be) the database at ``path``, in WAL mode, schema checked.

    Blocking: run it in a worker thread. The connection is in autocommit mode; callers
    bracket their work in ``BEGIN IMMEDIATE`` / ``COMMIT`` themselves.
    """
    db = sqlite3.connect(path, timeout=60.0, isolation_level=None, check_same_thread=False)
    db.row_factory = sqlite3.Row
    try:
        pragma(db, "journal_mode=WAL")
        pragma(db, f"synchronous={synchronous}")
        pragma(db, "foreign_keys=OFF")
        _create_or_check(db, path)
        # From now on a busy file is waited for by Store._begin, in short steps, and the WAL
        # is copied back by Store.checkpoint, off the Trio thread.
        pragma(db, "busy_timeout=0")
        pragma(db, "wal_autocheckpoint=0")
    except sqlite3.DatabaseError as exc:
        db.close()
        raise SchemaMismatch(f"{path} is not a kiwitrio sqlite database: {exc}") from exc
    except BaseException:
        db.close()
        raise
    return db


def pragma(db: sqlite3.Connection, statement: str) -> list[Any]:
    """Run ``PRAGMA statement`` to its end: many pragmas answer with a row, and a statement
    left unfinished would make the next SAVEPOINT (or COMMIT) fail."""
    return db.execute(f"PRAGMA {statement}").fetchall()


def _create_or_check(db: sqlite3.Connection, path: str) -> None:
    """Create the tables in an empty file; otherwise check its version (under the write lock,
    so that two processes opening a new file at once create it once)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        version = pragma(db, "user_version")[0][0]
        tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if version == 0 and tables == 0:
            for statement in _TABLES.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.executemany(
                "INSERT INTO exchanges VALUES (?, ?, 1, 0)", _PREDECLARED_EXCHANGES.items())
            pragma(db, f"user_version={SCHEMA_VERSION}")
        elif version != SCHEMA_VERSION:
            raise SchemaMismatch(
                f"{path} has kiwitrio sqlite schema version {version}, this kiwitrio "
                f"uses version {SCHEMA_VERSION}: open it with the kiwitrio that wrote it, "
                "or use a new file")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
