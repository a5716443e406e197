"""Making commits durable after the write lock is released.

Every transaction commits at SQLite's ``synchronous=NORMAL``: the COMMIT writes the WAL
frames to the OS (so that they survive any process being killed) but does not wait for the
disk, and the file's write lock is released at once. A commit that must survive a power loss
(a persistent publish, a declaration) then waits for an fsync of the WAL file, done here,
outside the write lock: the other processes write meanwhile, where SQLite's
``synchronous=FULL`` would make every one of them wait for each fsync in turn.

Why this is as durable as ``FULL``: the fsync flushes the whole WAL file, so every frame of
the commit (and of every commit before it) is on the disk when it returns; WAL recovery keeps
every complete commit of the valid prefix of the log. If a checkpoint copied the frames into
the database file and the WAL was started again meanwhile, they are on the disk already: at
NORMAL, SQLite fsyncs the database file after each checkpoint, before the WAL can be reused.
"""

from __future__ import annotations

import os

import trio

from ..._errors import DeliveryFailed

__all__ = ["WalSync"]


class WalSync:
    """fsyncs of one database's WAL, one at a time, each covering every commit made before
    it started (so that concurrent durable commits share one fsync)."""

    def __init__(self, db_path: str) -> None:
        self._db_path = db_path
        #: Numbers the commits; an fsync that started after commit ``n`` covers it.
        self._committed = 0
        self._synced = 0
        self._running: trio.Event | None = None
        #: Once an fsync failed, the kernel may have dropped the pages it could not write:
        #: a later fsync that succeeds proves nothing, so every later wait fails too.
        self._failed: OSError | None = None

    def committed(self) -> int:
        """Note a commit just made (on the Trio thread, right after its COMMIT); the ticket
        to :meth:`wait` for."""
        self._committed += 1
        return self._committed

    async def wait(self, ticket: int) -> None:
        """Return once the commit ``ticket`` is on the disk; DeliveryFailed if the disk
        refused. Cancellation: callers shield it (the commit happened; only its durability
        is being waited for)."""
        while self._synced < ticket:
            self._check()
            if self._running is not None:
                await self._running.wait()
                continue
            self._running = trio.Event()
            target = self._committed
            try:
                await trio.to_thread.run_sync(self._fsync)
                self._synced = max(self._synced, target)
            except OSError as exc:
                self._failed = exc
            finally:
                running, self._running = self._running, None
                running.set()
        self._check()

    def _check(self) -> None:
        if self._failed is not None:
            raise DeliveryFailed(
                f"the disk refused to sync {self._db_path}: the sqlite file's durable writes "
                f"since then may be lost ({self._failed})") from self._failed

    def _fsync(self) -> None:
        """In a worker thread. The WAL exists while any connection has the file open (ours
        does); if it is missing anyway, its content went into the database file."""
        for path in (self._db_path + "-wal", self._db_path):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            return
