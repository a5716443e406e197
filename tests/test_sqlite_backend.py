"""What only the sqlite backend has: its URL, its file (schema version, durability across
sessions, consistency after a writer is SIGKILLed mid-transaction) and its doorbells.

The semantics it shares with RabbitMQ and the memory broker are in test_backend_contract.py
and the communicator suites (the ``sqlite`` parameter of their fixtures).
"""

from __future__ import annotations

import contextlib
import functools
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import kiwitrio
from kiwitrio._backends import OutgoingMessage, QueueSpec
from kiwitrio._backends._sqlite import SCHEMA_VERSION, SchemaMismatch, _store
from kiwitrio._backends._sqlite import _messages as _sqlite_messages
from kiwitrio._backends._sqlite import _session as _sqlite_session
from kiwitrio._backends._sqlite._doorbell import EVERY, Doorbell, is_gone, ring
from kiwitrio._backends._sqlite._options import SqliteOptions
from kiwitrio.backends import open_session
from kiwitrio.testing import KiwitrioNames

from .conftest import SQLITE_ENABLED, Names
from .test_cli import Background, background, cli_env, run  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(not SQLITE_ENABLED, reason="KIWITRIO_TEST_SQLITE=0")]

#: How long a delivery the test expects may take (generous: a loaded 2-CPU machine).
ARRIVAL = 5.0


def message(body: bytes = b"x") -> OutgoingMessage:
    return OutgoingMessage(body=body, content_type="text/plain", persistent=True)


def transient(body: bytes) -> OutgoingMessage:
    """A message a publish may push to a sole consumer (persistent ones it does not)."""
    return OutgoingMessage(body=body, content_type="text/plain", persistent=False)


def url_of(path: Path, **options: object) -> str:
    query = "&".join(f"{key}={value}" for key, value in options.items())
    return f"sqlite://{path}" + (f"?{query}" if query else "")


# -- the URL ------------------------------------------------------------------------------------


def test_the_url_names_an_absolute_file_and_its_options() -> None:
    options = SqliteOptions.from_url("sqlite:///var/tmp/kt.db?liveness=5&poll=0.5")
    assert (options.path, options.login, options.liveness, options.poll) == (
        "/var/tmp/kt.db", "guest", 5.0, 0.5)
    assert SqliteOptions.from_url("sqlite://alice@/tmp/a%20b.db").login == "alice"
    assert SqliteOptions.from_url("sqlite://alice@/tmp/a%20b.db").path == "/tmp/a b.db"


@pytest.mark.parametrize("url", [
    "sqlite://host/kt.db",            # a host: not a local file
    "sqlite:kt.db",                   # relative
    "sqlite:///tmp/dir/",             # a directory
    "sqlite:///tmp/kt.db?bogus=1",    # unknown option
    "sqlite:///tmp/kt.db?poll=0",     # out of range
    "sqlite:///tmp/kt.db?liveness=soon",
    "sqlite:///tmp/kt.db?synchronous=off",  # would give up durability
])
async def test_bad_urls_are_refused_before_touching_any_file(url: str) -> None:
    with pytest.raises(ValueError):
        async with open_session(url, heartbeat=0):
            pass


# -- the file -----------------------------------------------------------------------------------


async def test_a_file_of_another_schema_version_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "kt.db"
    async with open_session(url_of(path), heartbeat=0):
        pass
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(SchemaMismatch, match=f"schema version {SCHEMA_VERSION + 1}.*uses "
                                             f"version {SCHEMA_VERSION}"):
        async with open_session(url_of(path), heartbeat=0):
            pass
    assert issubclass(SchemaMismatch, kiwitrio.ConnectionFailed)


async def test_a_foreign_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all" * 100)
    with pytest.raises(SchemaMismatch, match="not a kiwitrio sqlite database"):
        async with open_session(url_of(garbage), heartbeat=0):
            pass
    other = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(other)) as db, db:
        db.execute("CREATE TABLE mine (x)")
    with pytest.raises(SchemaMismatch, match="schema version 0"):
        async with open_session(url_of(other), heartbeat=0):
            pass
    with contextlib.closing(sqlite3.connect(other)) as db, db:  # untouched
        assert [row[0] for row in db.execute("SELECT name FROM sqlite_master")] == ["mine"]


async def test_messages_outlive_every_session(tmp_path: Path) -> None:
    """Nothing lives in a process: a message published and left is there for the next."""
    url = url_of(tmp_path / "kt.db")
    async with open_session(url, heartbeat=0) as session:
        queue = await session.declare_queue(QueueSpec("durable-q", durable=True))
        await session.publish("", queue, message(b"kept"), mandatory=True)
        taken = await session.get(queue)
        assert taken is not None  # held, unsettled, when the session closes: back it goes
    async with open_session(url, heartbeat=0) as session:
        again = await session.get(queue)
        assert again is not None and (again.body, again.redelivered) == (b"kept", True)
        await again.ack()
        assert await session.get(queue) is None


# -- doorbells ----------------------------------------------------------------------------------


async def test_a_consumer_is_rung_not_polled(tmp_path: Path) -> None:
    """With the safety-net poll at a minute, deliveries to another connection's consumer
    still arrive at once: the publisher rang its doorbell."""
    url = url_of(tmp_path / "kt.db", poll=60, liveness=600)
    async with open_session(url, heartbeat=0) as publisher, \
            open_session(url, heartbeat=0) as worker:
        queue = await publisher.declare_queue(QueueSpec("rung", durable=True))
        consumer = await worker.consume(queue, prefetch_count=1)
        for number in range(20):
            body = str(number).encode()
            await publisher.publish("", queue, message(body), mandatory=True)
            with trio.fail_after(ARRIVAL):
                delivery = await consumer.deliveries.receive()
            assert delivery.body == body
            await delivery.ack()
        await consumer.cancel()


async def test_a_ring_names_consumers_and_probes_are_not_rings(tmp_path: Path) -> None:
    """A ring says which consumers got messages; checking that a doorbell is held sends a
    probe, which must not wake its owner (it would look at the file for nothing, on every
    RPC call, before the call is even committed)."""
    bell = Doorbell.bind(str(tmp_path / "kt.db"), uuid.uuid4().hex)
    try:
        assert not is_gone(bell.address)  # a probe, queued first
        ring({bell.address: {"c1", "c2"}})
        ring({bell.address: {"c3"}})
        with trio.fail_after(ARRIVAL):
            assert await bell.wait() == {"c1", "c2", "c3"}
        ring({bell.address: {f"c{n}" for n in range(100)}})  # too many to name
        with trio.fail_after(ARRIVAL):
            assert await bell.wait() == {EVERY}
        for number in range(20):  # more than the doorbell holds: some are refused
            ring({bell.address: {f"c{number}"}})
        with trio.fail_after(ARRIVAL):
            assert EVERY in await bell.wait()
    finally:
        bell.close()
    assert is_gone(bell.address)


async def test_a_consumer_nobody_competes_with_reads_what_was_pushed_to_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A transient publish to an exclusive queue with its one consumer delivers the message
    itself: the consumer reads it (no write transaction, no claim); a persistent one it
    claims at once, without looking; a consumer of a shared queue looks (a read) and then
    claims (a write). A ring for one consumer does not make the others look."""
    calls: list[tuple[_store.Store, str]] = []
    real_read, real_run = _store.Store.read, _store.Store.run

    async def counting_read(self: _store.Store, work: Callable[[Any], Any]) -> Any:
        calls.append((self, "read"))
        return await real_read(self, work)

    async def counting_run(self: _store.Store, work: Callable[[Any], Any], **kw: Any) -> Any:
        calls.append((self, "write"))
        return await real_run(self, work, **kw)

    monkeypatch.setattr(_store.Store, "read", counting_read)
    monkeypatch.setattr(_store.Store, "run", counting_run)
    url = url_of(tmp_path / "kt.db", poll=60, liveness=600)
    async with open_session(url, heartbeat=0) as publisher, \
            open_session(url, heartbeat=0) as worker:
        sole = await worker.declare_queue(QueueSpec("sole", exclusive=True))
        shared = await worker.declare_queue(QueueSpec("shared"))
        consumers = [await worker.consume(sole, prefetch_count=1),
                     await worker.consume(shared, prefetch_count=1)]
        deliveries = []
        for queue, consumer, expected, persistent in (
                (sole, consumers[0], ["read"], False),
                (sole, consumers[0], ["write"], True),  # claimed at once, not pushed
                (shared, consumers[1], ["read", "write"], False)):
            # Until the worker's look for its new consumers is over.
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            calls.clear()
            body = queue.encode()
            await publisher.publish("", queue, message(body) if persistent else transient(body),
                                    mandatory=True)
            with trio.fail_after(ARRIVAL):
                deliveries.append(await consumer.deliveries.receive())
            worker_calls = [what for store, what in calls
                            if store is worker._store]  # type: ignore[attr-defined]
            assert (deliveries[-1].body, worker_calls) == (body, expected)
            await deliveries[-1].ack()


async def pushed_queue(session: Any, name: str, **arguments: Any) -> str:
    """An exclusive queue of ``session``: its one consumer gets its messages pushed."""
    return str(await session.declare_queue(QueueSpec(name, exclusive=True,
                                                     arguments=arguments)))


async def test_pushed_messages_wait_for_room_and_come_in_order(tmp_path: Path) -> None:
    """A consumer with no room left does not get what is pushed to it until it settles
    something: prefetch holds, and nothing is lost or reordered meanwhile."""
    url = url_of(tmp_path / "kt.db", poll=60, liveness=600)
    async with open_session(url, heartbeat=0) as publisher, \
            open_session(url, heartbeat=0) as worker:
        queue = await pushed_queue(worker, "room")
        consumer = await worker.consume(queue, prefetch_count=2)
        for number in range(5):
            await publisher.publish("", queue, transient(str(number).encode()), mandatory=True)
        held = []
        with trio.fail_after(ARRIVAL):
            for _ in range(2):
                held.append(await consumer.deliveries.receive())
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        with pytest.raises(trio.WouldBlock):
            consumer.deliveries.receive_nowait()  # no room: the third waits
        assert (await worker.inspect_queue(queue)).messages == 0  # type: ignore[union-attr]
        bodies = [d.body for d in held]
        with trio.fail_after(ARRIVAL):
            while len(bodies) < 5:
                await held.pop(0).ack()
                held.append(await consumer.deliveries.receive())
                bodies.append(held[-1].body)
        assert bodies == [b"0", b"1", b"2", b"3", b"4"]
        assert not any(d.redelivered for d in held)
        for delivery in held:
            await delivery.ack()


async def test_unread_pushed_messages_go_back_undelivered_when_the_consumer_goes(
        tmp_path: Path) -> None:
    """Cancelling a consumer, or closing its session, hands back what was pushed to it and
    not read yet as never delivered (not flagged redelivered); what it read is delivered."""
    url = url_of(tmp_path / "kt.db", poll=60, liveness=600)
    async with open_session(url, heartbeat=0) as publisher:
        queue = await publisher.declare_queue(QueueSpec("durable-x", durable=True))
        async with open_session(url, heartbeat=0) as worker:
            consumer = await worker.consume(queue, prefetch_count=1, exclusive=True)
            for body in (b"0", b"1", b"2"):
                await publisher.publish("", queue, transient(body), mandatory=True)
            with trio.fail_after(ARRIVAL):
                first = await consumer.deliveries.receive()
            await consumer.cancel()
            await first.ack()
            assert (await publisher.inspect_queue(queue)).messages == 2  # type: ignore[union-attr]
            back = [await publisher.get(queue), await publisher.get(queue)]
            assert [(d.body, d.redelivered) for d in back if d is not None] == [
                (b"1", False), (b"2", False)]
            for delivery in back:
                await delivery.ack()  # type: ignore[union-attr]
            consumer = await worker.consume(queue, prefetch_count=1, exclusive=True)
            for body in (b"a", b"b"):
                await publisher.publish("", queue, transient(body), mandatory=True)
            with trio.fail_after(ARRIVAL):
                assert (await consumer.deliveries.receive()).body == b"a"
        # Closed holding "a" (delivered, unsettled) and "b" (pushed, unread).
        again = [await publisher.get(queue), await publisher.get(queue)]
        assert [(d.body, d.redelivered) for d in again if d is not None] == [
            (b"a", True), (b"b", False)]
        for delivery in again:
            await delivery.ack()  # type: ignore[union-attr]
        await publisher.delete_queue(queue)


async def test_pushed_messages_never_overtake_ready_ones(tmp_path: Path) -> None:
    """Queue order holds with pushes: a message published while older ones wait in the queue
    comes after them, and one given back comes again before those pushed after it."""
    url = url_of(tmp_path / "kt.db", poll=60, liveness=600)
    async with open_session(url, heartbeat=0) as publisher, \
            open_session(url, heartbeat=0) as worker:
        queue = await pushed_queue(worker, "order")

        async def take(consumer: Any, count: int) -> list[tuple[bytes, bool]]:
            seen = []
            with trio.fail_after(ARRIVAL):
                for _ in range(count):
                    delivery = await consumer.deliveries.receive()
                    seen.append((delivery.body, delivery.redelivered))
                    await delivery.ack()
            return seen

        for body in (b"0", b"1"):  # waiting in the queue before anyone consumes
            await publisher.publish("", queue, transient(body), mandatory=True)
        consumer = await worker.consume(queue, prefetch_count=1)
        await publisher.publish("", queue, transient(b"2"), mandatory=True)
        assert await take(consumer, 3) == [(b"0", False), (b"1", False), (b"2", False)]

        for body in (b"3", b"4", b"5"):  # pushed: the queue is empty now
            await publisher.publish("", queue, transient(body), mandatory=True)
        with trio.fail_after(ARRIVAL):
            await (await consumer.deliveries.receive()).reject(requeue=True)
        assert await take(consumer, 3) == [(b"3", True), (b"4", False), (b"5", False)]


async def test_a_pushed_message_whose_ring_was_lost_arrives_by_the_poll(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rings are hints for pushed messages too: with every ring lost, the safety-net poll
    makes the consumer read what was pushed to it."""
    monkeypatch.setattr(_sqlite_session, "ring", lambda rings: None)
    url = url_of(tmp_path / "kt.db", poll=0.2, liveness=600)
    async with open_session(url, heartbeat=0) as publisher, \
            open_session(url, heartbeat=0) as worker:
        queue = await pushed_queue(worker, "unrung")
        consumer = await worker.consume(queue, prefetch_count=1)
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        await publisher.publish("", queue, transient(b"quiet"), mandatory=True)
        with trio.fail_after(ARRIVAL):
            delivery = await consumer.deliveries.receive()
        assert delivery.body == b"quiet"
        await delivery.ack()


async def test_a_look_that_finds_the_file_busy_loses_no_pushed_message(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A look reads what was pushed and then which other queues have messages; if the second
    read finds the file busy, the look is dropped whole, and the pushed message is read again
    at the next one instead of being left held and never handed over."""
    real_read, real_ready = _sqlite_messages.read_pushed, _sqlite_messages.consumers_with_ready
    state: dict[str, Any] = {"read": {}, "raised": False}

    def read_pushed(tx: Any, after: Any) -> Any:
        state["read"] = real_read(tx, after)
        return state["read"]

    def busy_once(tx: Any, consumers: Any) -> Any:
        if state["read"] and not state["raised"]:
            state["raised"] = True
            raise sqlite3.OperationalError("database is locked")
        return real_ready(tx, consumers)

    monkeypatch.setattr(_sqlite_messages, "read_pushed", read_pushed)
    monkeypatch.setattr(_sqlite_messages, "consumers_with_ready", busy_once)
    # No rings: the poll's look covers both consumers at once.
    monkeypatch.setattr(_sqlite_session, "ring", lambda rings: None)
    url = url_of(tmp_path / "kt.db", poll=0.2, liveness=600)
    async with open_session(url, heartbeat=0) as publisher, \
            open_session(url, heartbeat=0) as worker:
        queue = await pushed_queue(worker, "busy")
        shared = await worker.declare_queue(QueueSpec("busy-shared"))
        consumer = await worker.consume(queue, prefetch_count=1)
        other = await worker.consume(shared, prefetch_count=1)
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        await publisher.publish("", queue, transient(b"kept"), mandatory=True)
        with trio.fail_after(ARRIVAL):
            delivery = await consumer.deliveries.receive()
        assert (delivery.body, state["raised"]) == (b"kept", True)
        await delivery.ack()
        await other.cancel()


async def test_a_pushed_message_read_after_its_ttl_is_dead_lettered_not_delivered(
        tmp_path: Path) -> None:
    """A message pushed to a consumer with no room, whose time to live runs out before the
    consumer reads it, expires as a ready one would (dead-lettered), instead of arriving."""
    url = url_of(tmp_path / "kt.db", poll=60, liveness=600)
    async with open_session(url, heartbeat=0) as publisher, \
            open_session(url, heartbeat=0) as worker:
        await publisher.declare_exchange("dlx", "fanout", durable=False, auto_delete=False)
        dead = await publisher.declare_queue(QueueSpec("dead"))
        await publisher.bind_queue(dead, "dlx", "")
        queue = await pushed_queue(worker, "ttl", **{"x-dead-letter-exchange": "dlx"})
        consumer = await worker.consume(queue, prefetch_count=1)
        await publisher.publish("", queue, transient(b"kept"), mandatory=True)
        with trio.fail_after(ARRIVAL):
            kept = await consumer.deliveries.receive()
        short = OutgoingMessage(body=b"short", content_type="text/plain", expiration_ms=1)
        await publisher.publish("", queue, short, mandatory=True)
        await trio.sleep(0.05)  # past its 1 ms (wall clock): nothing to wait on
        dead_letters = await publisher.consume(dead, prefetch_count=1)
        await kept.ack()
        with trio.fail_after(ARRIVAL):
            got = await dead_letters.deliveries.receive()
        assert got.body == b"short"
        await got.ack()
        await dead_letters.cancel()
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        with pytest.raises(trio.WouldBlock):
            consumer.deliveries.receive_nowait()
        await publisher.delete_queue(dead)
        await publisher.delete_exchange("dlx")


# -- SIGKILL in the middle of writing --------------------------------------------------------------

#: A writer that publishes large messages to a fanout exchange bound to several queues (one
#: transaction writes a copy to each) and prints each number once its publish returned.
WRITER = textwrap.dedent("""
    import sys, trio
    from kiwitrio._backends import OutgoingMessage
    from kiwitrio.backends import open_session

    async def main(url, start):
        async with open_session(url, heartbeat=0) as session:
            number = start
            while True:
                body = str(number).encode().ljust(200_000, b".")
                await session.publish("fan", "", OutgoingMessage(body, "text/plain"),
                                      mandatory=True)
                print(number, flush=True)
                number += 1

    trio.run(main, sys.argv[1], int(sys.argv[2]))
""")
QUEUES = [f"copy{i}" for i in range(6)]


async def test_a_writer_killed_mid_transaction_leaves_the_file_consistent(
        tmp_path: Path) -> None:
    """Each publish is one transaction writing six copies: after SIGKILLs at arbitrary
    moments, the file passes SQLite's integrity check, every queue holds the same messages
    (a publish is all or nothing), and every publish that returned is among them."""
    url = url_of(tmp_path / "kt.db")
    async with open_session(url, heartbeat=0) as session:
        await session.declare_exchange("fan", "fanout", durable=True, auto_delete=False)
        for name in QUEUES:
            await session.declare_queue(QueueSpec(name, durable=True))
            await session.bind_queue(name, "fan", "")
    confirmed: set[int] = set()
    for round_number in range(8):
        confirmed |= await _publish_then_kill(url, start=round_number * 10_000,
                                              after=3 + round_number)
    with contextlib.closing(sqlite3.connect(tmp_path / "kt.db")) as db, db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        held = {name: sorted(int(bytes(body).rstrip(b".")) for (body,) in db.execute(
            "SELECT body FROM messages WHERE queue = ?", [name])) for name in QUEUES}
    first = held[QUEUES[0]]
    assert all(copies == first for copies in held.values())
    assert confirmed <= set(first)
    # The killed writers' connections are reaped, the file goes on being used.
    async with open_session(url, heartbeat=0) as session:
        assert await session.purge_queue(QUEUES[0]) == len(first)


async def _publish_then_kill(url: str, *, start: int, after: int) -> set[int]:
    """Run a writer until it confirmed ``after`` publishes and a bit more, then SIGKILL it;
    the numbers it confirmed."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", WRITER, url, str(start)], stdout=subprocess.PIPE)
    assert process.stdout is not None
    confirmed: set[int] = set()
    buffer = b""
    try:
        with trio.fail_after(30):
            while len(confirmed) < after:
                chunk = await process.stdout.receive_some()
                assert chunk, "the writer stopped"
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                confirmed.update(int(line) for line in lines)
    finally:
        process.kill()  # SIGKILL, most likely in the middle of its next transaction
        with trio.CancelScope(shield=True):
            await process.wait()
            await process.stdout.aclose()
    return confirmed


# -- the pytest plugin ----------------------------------------------------------------------------


async def test_the_plugins_sqlite_communicator(kiwitrio_sqlite_communicator: kiwitrio.Communicator,
                                              ) -> None:
    comm = kiwitrio_sqlite_communicator
    assert comm.server_properties["product"] == "kiwitrio-sqlite"
    await comm.add_task_subscriber(lambda _comm, x: x * 2)
    with trio.fail_after(ARRIVAL):
        assert await (await comm.task_send(21)) == 42


async def test_the_plugin_deletes_what_a_test_left_in_the_file(
        kiwitrio_open: Any, kiwitrio_names: KiwitrioNames, tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/kt.db"
    async with kiwitrio_open(url=url) as comm:
        await comm.add_task_subscriber(lambda _comm, x: x)
        await comm.task_send("left behind", no_reply=True)
    with contextlib.closing(sqlite3.connect(tmp_path / "kt.db")) as db, db:
        assert _ours(db, kiwitrio_names.prefix)
    await kiwitrio_names.delete()  # what the fixture does after the test
    with contextlib.closing(sqlite3.connect(tmp_path / "kt.db")) as db, db:
        assert _ours(db, kiwitrio_names.prefix) == []


def _ours(db: sqlite3.Connection, prefix: str) -> list[str]:
    """The queues and exchanges in the file named with ``prefix``."""
    return [row[0] for row in db.execute(
        "SELECT name FROM queues WHERE name LIKE ? UNION ALL "
        "SELECT name FROM exchanges WHERE name LIKE ?", [prefix + "%", prefix + "%"])]


async def test_concurrent_work_of_one_session_shares_transactions(tmp_path: Path) -> None:
    """Acks, requeues and publishes issued at once go into shared transactions (group
    commit), each in a savepoint: all of them take effect, and one refused publish (to a
    missing exchange) undoes only itself."""
    async with open_session(url_of(tmp_path / "kt.db"), heartbeat=0) as session:
        queue = await session.declare_queue(QueueSpec("batched", durable=True))
        for number in range(40):
            await session.publish("", queue, message(b"old%d" % number), mandatory=True)
        held = [await session.get(queue) for _ in range(40)]
        refused: list[BaseException] = []

        async def refused_publish() -> None:
            try:
                await session.publish("missing", "k", message(), mandatory=True)
            except kiwitrio.DeliveryFailed as exc:
                refused.append(exc)

        async with trio.open_nursery() as nursery:
            for number, delivery in enumerate(held):
                assert delivery is not None
                if number % 2:
                    nursery.start_soon(delivery.ack)
                else:
                    nursery.start_soon(functools.partial(delivery.reject, requeue=True))
                nursery.start_soon(functools.partial(
                    session.publish, "", queue, message(b"new%d" % number), mandatory=True))
                if number == 20:
                    nursery.start_soon(refused_publish)
        assert len(refused) == 1
        stats = await session.inspect_queue(queue)
        assert stats is not None and stats.messages == 20 + 40


# -- liveness ---------------------------------------------------------------------------------


async def test_a_dead_connections_messages_come_back_at_once_a_hung_ones_after_liveness(
        tmp_path: Path) -> None:
    """Two connections hold a message each: one whose doorbell is gone (its process died)
    and one whose doorbell still answers but whose heartbeat stopped (a hung process). The
    first message is back within a few ticks, the second only after the liveness timeout."""
    path = tmp_path / "kt.db"
    url = url_of(path, liveness=4, poll=0.2)
    async with open_session(url, heartbeat=0) as session:
        queue = await session.declare_queue(QueueSpec("held", durable=True))
        for body in (b"of the dead", b"of the hung"):
            await session.publish("", queue, message(body), mandatory=True)
    hung_bell = Doorbell.bind(str(path), "hung-connection")
    try:
        stopped = time.time()
        with contextlib.closing(sqlite3.connect(path)) as db, db:
            db.execute("INSERT INTO connections VALUES ('dead', 'x', 1, ?, ?)",
                       ["@kiwitrio-nobody-" + uuid.uuid4().hex, stopped - 1])
            db.execute("INSERT INTO connections VALUES ('hung', 'x', 1, ?, ?)",
                       [hung_bell.address, stopped])
            for holder, body in (("dead", b"of the dead"), ("hung", b"of the hung")):
                db.execute("UPDATE messages SET holder = ? WHERE body = ?", [holder, body])
        async with open_session(url, heartbeat=0) as session:
            consumer = await session.consume(queue, prefetch_count=2)
            with trio.fail_after(3):
                first = await consumer.deliveries.receive()
            assert (first.body, first.redelivered) == (b"of the dead", True)
            if time.time() - stopped < 2.5:  # well before the liveness timeout (4 s)
                with trio.move_on_after(1):
                    early = await consumer.deliveries.receive()
                    raise AssertionError(f"{early.body!r} came back before its time")
            with trio.fail_after(4 + ARRIVAL):
                second = await consumer.deliveries.receive()
            assert second.body == b"of the hung" and time.time() - stopped >= 4
            for delivery in (first, second):
                await delivery.ack()
    finally:
        hung_bell.close()


async def test_a_session_declared_dead_is_lost(tmp_path: Path) -> None:
    """If the others declared this connection dead (it was suspended past the liveness
    timeout), its next heartbeat finds out: wait_lost() returns and calls fail."""
    path = tmp_path / "kt.db"
    async with open_session(url_of(path, poll=0.2), heartbeat=0) as session:
        with contextlib.closing(sqlite3.connect(path)) as db, db:
            db.execute("DELETE FROM connections")  # what a reaper does to a dead one
        with trio.fail_after(ARRIVAL):
            reason = await session.wait_lost()
        assert isinstance(reason, kiwitrio.ConnectionFailed)
        with pytest.raises(kiwitrio.CommunicatorClosed):
            await session.publish("", "q", message(), mandatory=False)


# -- the command line -------------------------------------------------------------------------


def test_the_command_line_works_on_a_sqlite_file(
        tmp_path: Path, names: Names,
        cli_env: dict[str, str],  # noqa: F811 (test_cli's fixture)
        background: Callable[..., Background],  # noqa: F811 (test_cli's fixture)
) -> None:
    """A worker process and the sending commands share the file as they would a broker."""
    options = ["--url", f"sqlite://{tmp_path}/cli.db", "--message-exchange",
               names.message_exchange, "--task-exchange", names.task_exchange,
               "--task-queue", names.task_queue, "--testing"]
    worker = background("worker", "worker", "kt_cli_tasks:square", *options)
    worker.wait_for("kiwitrio worker ready")
    result = run(cli_env, "send", "--json", "--wait", "1", "2", "3", *options)
    assert result.returncode == 0, result
    assert sorted(result.stdout.split()) == ["1", "4", "9"]
    status = run(cli_env, "status", *options)
    assert status.returncode == 0, status
    assert "kiwitrio-sqlite" in status.stdout
    assert f"{names.task_queue}: 0 waiting, 1 consumer" in status.stdout, status.stdout
    assert worker.stop(signal.SIGTERM) == 0, worker.describe()
