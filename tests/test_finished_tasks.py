"""The stores of finished tasks (kiwitrio.FinishedTasks): remembering, sharing, forgetting."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest
import trio

import kiwitrio
import kiwitrio._finished


async def test_the_memory_store_remembers_the_latest_tasks() -> None:
    store = kiwitrio.MemoryFinishedTasks(max_tasks=2)
    assert isinstance(store, kiwitrio.FinishedTasks)
    for task_id in ("a", "b", "c"):
        await store.remember(task_id, task_id.encode())
    assert [await store.reply_of(task_id) for task_id in ("a", "b", "c")] == [None, b"b", b"c"]
    with pytest.raises(ValueError):
        kiwitrio.MemoryFinishedTasks(max_tasks=0)


async def test_the_sqlite_store_is_shared_through_its_file(tmp_path: Path) -> None:
    path = tmp_path / "finished.db"
    one, other = kiwitrio.SqliteFinishedTasks(path), kiwitrio.SqliteFinishedTasks(path)
    assert isinstance(one, kiwitrio.FinishedTasks)
    try:
        assert await other.reply_of("t1") is None
        await one.remember("t1", b"\x00reply")
        await one.remember("t2", b"")  # a task sent with no_reply
        assert await other.reply_of("t1") == b"\x00reply"
        assert await other.reply_of("t2") == b""
        # Several tasks at once, from two stores (two processes would do the same).
        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon((one if n % 2 else other).remember, f"n{n}", b"%d" % n)
        assert [await one.reply_of(f"n{n}") for n in range(20)] == [b"%d" % n for n in range(20)]
    finally:
        one.close()
        other.close()
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_the_sqlite_store_forgets_old_tasks(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    store = kiwitrio.SqliteFinishedTasks(tmp_path / "finished.db", max_age=60.0)
    clock = [1_000_000.0]
    monkeypatch.setattr(kiwitrio._finished.time, "time", lambda: clock[0])
    try:
        await store.remember("old", b"1")
        clock[0] += 61.0
        store._writes = 1000  # the next write is one that prunes
        await store.remember("new", b"2")
        assert (await store.reply_of("old"), await store.reply_of("new")) == (None, b"2")
    finally:
        store.close()


async def test_a_file_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "finished.db"
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("PRAGMA user_version = 99")
    store = kiwitrio.SqliteFinishedTasks(path)
    with pytest.raises(ValueError, match="schema version 99; this kiwitrio reads version 1"):
        await store.reply_of("t")
    with pytest.raises(ValueError):
        kiwitrio.SqliteFinishedTasks(path, max_age=0)
