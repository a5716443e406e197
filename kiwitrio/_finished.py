"""Stores of finished tasks, for workers that must not run a redelivered task twice.

A task comes back after a worker finished it when the acknowledgement was lost (the
connection dropped between the reply and the ack, the worker was killed there) or when the
sender published it again because the broker's confirm never came. A worker given a
``finished_tasks`` store remembers each task's reply under the task's id before it
acknowledges the task, and answers a task it finds there with that reply instead of running
it again. One store can serve several worker processes: :class:`SqliteFinishedTasks` on one
host, or an implementation of :class:`FinishedTasks` of your own (a database, Redis) across
hosts.

What it cannot prevent: two workers running the same task *at the same time* (the broker
handed it to a second one while the first still ran, after the first one's connection
dropped); the first to finish is remembered, and the second's result is what its requester
may get if it finishes first.
"""

from __future__ import annotations

import collections
import sqlite3
import time
from pathlib import Path
from typing import Protocol, runtime_checkable

import trio

__all__ = ["FinishedTasks", "MemoryFinishedTasks", "SqliteFinishedTasks"]

#: Schema of the SQLite store; a file with another version is refused at open.
SQLITE_SCHEMA_VERSION = 1
#: How long a finished task is remembered by default: a week.
DEFAULT_MAX_AGE = 7 * 24 * 3600.0


@runtime_checkable
class FinishedTasks(Protocol):
    """Where workers remember the replies of finished tasks, by task id.

    ``reply`` is the encoded reply as sent (``b""`` for a task sent with ``no_reply``).
    Both methods are called in the Trio thread, so they must not block it (run blocking I/O
    with :func:`trio.to_thread.run_sync`). An exception from either is logged and the task
    handled as if there were no store: a store that fails never loses a task.
    """

    async def reply_of(self, task_id: str) -> bytes | None:
        """The reply remembered for ``task_id``, or ``None`` if it did not finish yet."""
        ...

    async def remember(self, task_id: str, reply: bytes) -> None:
        """Remember that ``task_id`` finished with ``reply`` (before it is acknowledged)."""
        ...


class MemoryFinishedTasks:
    """The last ``max_tasks`` finished tasks, in this process only: enough for redeliveries
    that come back to the same worker (a dropped connection), not for a worker that died."""

    def __init__(self, max_tasks: int = 100_000) -> None:
        if max_tasks < 1:
            raise ValueError(f"max_tasks must be at least 1, not {max_tasks}")
        self.max_tasks = max_tasks
        self._replies: collections.OrderedDict[str, bytes] = collections.OrderedDict()

    async def reply_of(self, task_id: str) -> bytes | None:
        await trio.lowlevel.checkpoint()
        return self._replies.get(task_id)

    async def remember(self, task_id: str, reply: bytes) -> None:
        await trio.lowlevel.checkpoint()
        self._replies[task_id] = reply
        self._replies.move_to_end(task_id)
        while len(self._replies) > self.max_tasks:
            self._replies.popitem(last=False)


class SqliteFinishedTasks:
    """Finished tasks in an SQLite file (WAL mode) that the worker processes of one host
    share; each is remembered for ``max_age`` seconds (default a week), so that the file
    stays the size of a week's work.

    The file is opened on first use; a file of another schema version raises
    :class:`ValueError`. Calls run in a worker thread, one at a time per store. Close it
    (``close()``, or use it as a ``with`` block) once the communicator using it is closed.
    """

    def __init__(self, path: str | Path, max_age: float = DEFAULT_MAX_AGE) -> None:
        if max_age <= 0:
            raise ValueError(f"max_age must be positive, not {max_age}")
        self.path = Path(path)
        self.max_age = max_age
        self._connection: sqlite3.Connection | None = None
        self._limiter = trio.CapacityLimiter(1)
        self._writes = 0

    async def reply_of(self, task_id: str) -> bytes | None:
        return await trio.to_thread.run_sync(self._reply_of, task_id, limiter=self._limiter)

    async def remember(self, task_id: str, reply: bytes) -> None:
        await trio.to_thread.run_sync(self._remember, task_id, reply, limiter=self._limiter)

    def close(self) -> None:
        """Close the file (it is opened again if the store is used again)."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __enter__(self) -> SqliteFinishedTasks:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- in the worker thread ---------------------------------------------------------------

    def _reply_of(self, task_id: str) -> bytes | None:
        row = self._db().execute("SELECT reply FROM finished WHERE task_id = ?",
                                 (task_id,)).fetchone()
        return None if row is None else bytes(row[0])

    def _remember(self, task_id: str, reply: bytes) -> None:
        db = self._db()
        now = time.time()
        with db:
            db.execute("INSERT OR REPLACE INTO finished (task_id, reply, finished_at) "
                       "VALUES (?, ?, ?)", (task_id, reply, now))
            self._writes += 1
            if self._writes % 1000 == 1:  # forget old tasks now and then, not on every write
                db.execute("DELETE FROM finished WHERE finished_at < ?", (now - self.max_age,))

    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            self._connection = _open(self.path)
        return self._connection


def _open(path: Path) -> sqlite3.Connection:
    # check_same_thread=False: Trio's worker threads take turns (one at a time, by the
    # store's limiter), never two at once.
    db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("BEGIN IMMEDIATE")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            db.execute("CREATE TABLE IF NOT EXISTS finished (task_id TEXT PRIMARY KEY, "
                       "reply BLOB NOT NULL, finished_at REAL NOT NULL)")
            db.execute("CREATE INDEX IF NOT EXISTS finished_at ON finished (finished_at)")
            db.execute(f"PRAGMA user_version = {SQLITE_SCHEMA_VERSION}")
        db.execute("COMMIT")
        if version not in (0, SQLITE_SCHEMA_VERSION):
            raise ValueError(f"{path} is a store of finished tasks of schema version "
                             f"{version}; this kiwitrio reads version {SQLITE_SCHEMA_VERSION}")
        db.isolation_level = "DEFERRED"  # transactions from here on: `with db:` commits
    except BaseException:
        db.close()
        raise
    return db
