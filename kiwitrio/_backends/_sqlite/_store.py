"""Transactions on the database file, run off the Trio thread.

Each session has one sqlite3 connection, used by one worker thread at a time (under a
:class:`trio.Lock`), so that the Trio loop never blocks on the file's lock or on fsync. Every
unit of work is inside one ``BEGIN IMMEDIATE`` ... ``COMMIT``: it happens wholly or not at
all, whoever is killed when.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio

from ..._errors import CommunicatorClosed, DeliveryFailed
from ._doorbell import EVERY, PUSHED
from ._schema import connect, pragma
from ._walsync import WalSync

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
        #: Consumers that messages were delivered to by their publish (consumer id: its
        #: connection): woken to read them (see :func:`._messages.read_pushed`).
        self.pushed: dict[str, str] = {}

    def execute(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        return self.db.execute(sql, tuple(params))

    def one(self, sql: str, params: Iterable[Any] = ()) -> Any:
        """The first row of a query, or ``None``.

        The cursor is closed at once: a statement left unfinished (an ``UPDATE ...
        RETURNING`` read for one row) would make the next SAVEPOINT fail.
        """
        cursor = self.db.execute(sql, tuple(params))
        try:
            return cursor.fetchone()
        finally:
            cursor.close()

    def bells(self) -> dict[str, set[str]]:
        """The doorbells to ring once this commits (the caller's own included), each with
        the consumers there to name in its ring (see :mod:`._doorbell`)."""
        found: dict[str, set[str]] = {}
        if self.touched:
            marks = ",".join("?" * len(self.touched))
            for bell, consumer in self.execute(
                    "SELECT c.bell, k.id FROM consumers k JOIN connections c "
                    f"ON c.id = k.connection WHERE k.queue IN ({marks})", self.touched):
                found.setdefault(bell, set()).add(consumer)
        if self.notify:
            marks = ",".join("?" * len(self.notify))
            for (bell,) in self.execute(
                    f"SELECT bell FROM connections WHERE id IN ({marks})", self.notify):
                found.setdefault(bell, set()).add(EVERY)
        if self.pushed:
            connections = set(self.pushed.values())
            marks = ",".join("?" * len(connections))
            bells = dict(self.execute(
                f"SELECT id, bell FROM connections WHERE id IN ({marks})", connections))
            for consumer, connection in self.pushed.items():
                if connection in bells:
                    found.setdefault(bells[connection], set()).add(PUSHED + consumer)
        return found


@dataclass(eq=False)
class _Job:
    """One caller's unit of work, waiting for (or done in) a batch."""

    work: Callable[[Tx], Any]
    durable: bool
    #: Taken into a batch by whoever holds the connection: it runs, whatever happens to
    #: the caller meanwhile.
    taken: bool = False
    done: trio.Event = field(default_factory=trio.Event)
    result: Any = None
    error: BaseException | None = None
    bells: dict[str, set[str]] = field(default_factory=dict)
    #: For a durable job that committed: its commit's :meth:`WalSync.committed` number.
    sync_ticket: int = 0


class Store:
    """A session's connection to the database file.

    Group commit: the work of every caller that is waiting when the connection comes free
    goes into one transaction (each in a savepoint of its own, so that one refusal undoes
    only its own work), so that concurrent publishes and acks share one commit and one
    fsync.
    """

    def __init__(self, db: sqlite3.Connection, me: str, liveness: float,
                 wal_sync: WalSync | None) -> None:
        self._db = db
        self._me = me
        self._liveness = liveness
        #: Makes durable commits durable (``None``: the URL said ``synchronous=normal``).
        self._wal_sync = wal_sync
        self._lock = trio.Lock()
        self._pending: list[_Job] = []
        self._closed = False

    @classmethod
    async def open(cls, path: str, me: str, *, liveness: float, synchronous: str) -> Store:
        """Open the file in a worker thread; raises SchemaMismatch for a foreign file.

        Cancellation waits for the open to finish (and then closes it).
        """
        db = await trio.to_thread.run_sync(lambda: connect(path, synchronous="normal"))
        return cls(db, me, liveness, None if synchronous == "normal" else WalSync(path))

    async def run(self, work: Callable[[Tx], T], *,
                  durable: bool) -> tuple[T, dict[str, set[str]]]:
        """Run ``work`` in a transaction in a worker thread; its result and the doorbells to
        ring now that it committed. An exception from ``work`` undoes all its work; an
        error of the file (disk full, I/O) is raised as DeliveryFailed.

        ``durable``: the commit reaches the disk before this returns (an fsync of the WAL
        after the commit, outside the write lock: see :mod:`._walsync`; none with the URL's
        ``synchronous=normal``). Every commit is at SQLite's ``synchronous=NORMAL``: it
        survives any process being killed, and a power loss once the next fsync is done
        (the WAL is written in order).

        Cancellation: while the work waits for the connection, it is withdrawn and not done;
        once taken into a transaction, it runs to its commit or rollback and this returns
        its outcome (the cancellation takes effect at the caller's next checkpoint).
        """
        job = _Job(work, durable)
        self._pending.append(job)
        try:
            async with self._lock:
                if not job.taken:
                    await self._run_pending()
        except trio.Cancelled:
            if not job.taken:
                self._pending.remove(job)
                raise
            with trio.CancelScope(shield=True):
                await job.done.wait()
        if job.error is not None:
            raise job.error
        if job.sync_ticket and self._wal_sync is not None:
            with trio.CancelScope(shield=True):  # it committed: report its outcome
                await self._wal_sync.wait(job.sync_ticket)
        result: T = job.result
        return result, job.bells

    async def _run_pending(self) -> None:
        batch, self._pending = self._pending, []
        for job in batch:
            job.taken = True
        try:
            await self._run_batch(batch)
        except BaseException as exc:  # the whole transaction is undone: each job failed
            error = _as_kiwitrio_error(exc)
            for job in batch:
                job.error, job.result = error, None
            if not isinstance(exc, Exception):
                raise
        finally:
            for job in batch:
                job.done.set()

    async def _run_batch(self, batch: list[_Job]) -> None:
        """One transaction for the whole batch.

        The work itself runs here, on the Trio thread: it is short (no fsync, no waiting: the
        write lock is taken first) and, done in a worker thread, each statement would wait
        for the GIL while the lock is held, stretching everyone's wait for the file. What can
        block goes to a worker thread: waiting for the lock while another process holds it,
        and, once the lock is released, a durable commit's fsync (:meth:`run`).
        """
        if self._closed:
            raise CommunicatorClosed("the sqlite broker session is closed")
        if not self._try_begin():
            await trio.to_thread.run_sync(self._begin)
        try:
            wakes = Tx(self._db, self._me, self._liveness)
            for job in batch:
                self._run_job(job, wakes, alone=len(batch) == 1)
            # The doorbells of the whole batch, rung by one of its callers.
            batch[0].bells = wakes.bells()
            self._db.execute("COMMIT")  # no fsync at NORMAL, no auto-checkpoint
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        if self._wal_sync is not None and any(job.durable for job in batch):
            ticket = self._wal_sync.committed()
            for job in batch:
                if job.durable and job.error is None:
                    job.sync_ticket = ticket

    def _run_job(self, job: _Job, wakes: Tx, *, alone: bool) -> None:
        """Run one job, in a savepoint unless it is ``alone`` in its transaction (whose
        rollback then undoes it); what it changed goes into ``wakes``."""
        tx = Tx(self._db, self._me, self._liveness)
        if not alone:
            self._db.execute("SAVEPOINT job")
        try:
            job.result = job.work(tx)
        except Exception as exc:
            if alone:
                raise
            self._db.execute("ROLLBACK TO job")
            job.error = _as_kiwitrio_error(exc)
        else:
            wakes.touched |= tx.touched
            wakes.notify |= tx.notify
            wakes.pushed |= tx.pushed
        if not alone:
            self._db.execute("RELEASE job")

    def _try_begin(self) -> bool:
        """Take the file's write lock if it is free; never waits (busy_timeout is 0)."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
            return False
        return True

    def _begin(self) -> None:
        """In a worker thread: take the write lock, retrying quickly while another process
        holds it.

        SQLite's own busy handler sleeps 1 ms, then longer and longer; transactions here last
        tens of microseconds (or one fsync), so short sleeps keep the latency down.
        """
        delay, deadline = _FIRST_RETRY, time.monotonic() + _LOCK_TIMEOUT
        while not self._try_begin():
            if time.monotonic() > deadline:
                raise DeliveryFailed(f"the sqlite file stayed locked for {_LOCK_TIMEOUT} s")
            time.sleep(delay)
            delay = min(delay * 2, _LAST_RETRY)

    async def read(self, work: Callable[[Tx], T]) -> T | None:
        """Run read-only ``work`` outside a write transaction: in WAL mode it takes no lock
        that writers wait for, so looking costs the other processes nothing. ``None`` if the
        file could not be read at once (a reader meets SQLITE_BUSY only in rare moments,
        e.g. while another connection recovers the WAL): the caller then does not know.

        Cancellation: waiting for the connection is cancellable; the read itself is short.
        """
        async with self._lock:
            if self._closed:
                raise CommunicatorClosed("the sqlite broker session is closed")
            try:
                return work(Tx(self._db, self._me, self._liveness))
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise _as_kiwitrio_error(exc) from exc
                return None

    async def checkpoint(self) -> None:
        """Copy the WAL back into the database file, in a worker thread (SQLite would do it
        in some COMMIT, on the Trio thread, if it were left to it: auto-checkpoints are off).
        PASSIVE: it copies what no reader still needs and never waits for one.

        Cancellation: waiting for the connection is cancellable; once started, it finishes.
        """
        async with self._lock:
            if not self._closed:
                await trio.to_thread.run_sync(pragma, self._db, "wal_checkpoint(PASSIVE)")

    async def aclose(self) -> None:
        """Close the file once the work under way is done. Cancellation: shielded."""
        with trio.CancelScope(shield=True):
            async with self._lock:
                self._closed = True
                self._db.close()


#: Waiting for the write lock: from 0.1 ms, doubling up to 2 ms, for at most a minute.
_FIRST_RETRY = 0.0001
_LAST_RETRY = 0.002
_LOCK_TIMEOUT = 60.0


def _as_kiwitrio_error(exc: BaseException) -> BaseException:
    """An sqlite3 error as DeliveryFailed (kiwitrio's errors, and others, as they are)."""
    if isinstance(exc, sqlite3.Error):
        error = DeliveryFailed(f"the sqlite file refused the operation: {exc}")
        error.__cause__ = exc
        return error
    return exc
