"""Transactions on the database file, run off the Trio thread.

Each session has one sqlite3 connection, used by one worker thread at a time (a
:class:`trio.CapacityLimiter` of one), so that the Trio loop never blocks on the file's lock
or on fsync. Every unit of work is one ``BEGIN IMMEDIATE`` ... ``COMMIT``: it happens wholly
or not at all, whoever is killed when.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import trio

from ._schema import connect

__all__ = ["Store", "Tx"]

T = TypeVar("T")


class Tx:
    """One transaction in progress: the connection, who runs it, and what it changed that
    other connections should hear of (their doorbells are rung after the commit)."""

    def __init__(self, db: sqlite3.Connection, me: str, liveness: float) -> None:
        self.db = db
        #: The id of the connection (session) doing the work.
        self.me = me
        #: A connection whose heartbeat is older than this many seconds counts as dead.
        self.liveness = liveness
        #: Wall-clock time, one instant for the whole transaction.
        self.now = time.time()
        #: Queues that got ready messages: their consumers' connections are woken.
        self.touched: set[str] = set()
        #: Connections that lost consumers (their queue went): woken to notice.
        self.notify: set[str] = set()

    def execute(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        return self.db.execute(sql, tuple(params))

    def one(self, sql: str, params: Iterable[Any] = ()) -> Any:
        """The first row of a query, or ``None``."""
        return self.db.execute(sql, tuple(params)).fetchone()

    def bells(self) -> set[str]:
        """The doorbells to ring once this commits (the caller's own included)."""
        found: set[str] = set()
        if self.touched:
            marks = ",".join("?" * len(self.touched))
            found.update(row[0] for row in self.execute(
                "SELECT DISTINCT c.bell FROM consumers k JOIN connections c "
                f"ON c.id = k.connection WHERE k.queue IN ({marks})", self.touched))
        if self.notify:
            marks = ",".join("?" * len(self.notify))
            found.update(row[0] for row in self.execute(
                f"SELECT bell FROM connections WHERE id IN ({marks})", self.notify))
        return found


class Store:
    """A session's connection to the database file."""

    def __init__(self, db: sqlite3.Connection, me: str, liveness: float,
                 synchronous: str) -> None:
        self._db = db
        self._me = me
        self._liveness = liveness
        #: SQLite's ``synchronous`` for durable transactions; the others run at NORMAL.
        self._synchronous = synchronous
        self._current_synchronous = synchronous
        self._limiter = trio.CapacityLimiter(1)
        self._closed = False

    @classmethod
    async def open(cls, path: str, me: str, *, liveness: float, synchronous: str) -> Store:
        """Open the file in a worker thread; raises SchemaMismatch for a foreign file.

        Cancellation waits for the open to finish (and then closes it).
        """
        db = await trio.to_thread.run_sync(lambda: connect(path, synchronous=synchronous))
        return cls(db, me, liveness, synchronous)

    async def run(self, work: Callable[[Tx], T], *, durable: bool) -> tuple[T, set[str]]:
        """Run ``work`` in one transaction in a worker thread; its result and the doorbells
        to ring now that it committed. An exception from ``work`` rolls it all back.

        ``durable``: the commit reaches the disk before this returns (fsync, with the
        URL's ``synchronous=full``). Otherwise (``synchronous=NORMAL`` in WAL mode) it
        survives any process being killed but maybe not a power loss, until the next
        durable commit, which makes it and everything before it durable too (the WAL is
        written in order).

        Cancellation: while waiting for the connection, the work is not done; once started,
        it runs to its commit or rollback (the caller's cancellation then takes effect).
        """
        return await trio.to_thread.run_sync(self._transaction, work, durable,
                                             limiter=self._limiter)

    def _transaction(self, work: Callable[[Tx], T], durable: bool) -> tuple[T, set[str]]:
        if self._closed:
            raise RuntimeError("the store is closed")
        synchronous = self._synchronous if durable else "normal"
        if synchronous != self._current_synchronous:  # only outside a transaction
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._current_synchronous = synchronous
        tx = Tx(self._db, self._me, self._liveness)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            result = work(tx)
            bells = tx.bells()
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return result, bells

    async def aclose(self) -> None:
        """Close the file once the work under way is done. Cancellation: shielded."""
        with trio.CancelScope(shield=True):
            async with self._limiter:
                self._closed = True
                self._db.close()
