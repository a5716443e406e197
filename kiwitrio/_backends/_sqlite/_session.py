"""Sessions on the sqlite file: the :class:`~kiwitrio.backends.Session` interface over
transactions (:mod:`._store`), with a background loop per session that hands ready messages
to its consumers, keeps its heartbeat, and reaps dead connections and expired messages and
queues."""

from __future__ import annotations

import copy
import logging
import math
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from ..._errors import CommunicatorClosed, ConnectionFailed, DeliveryFailed, InUseError
from ..._version import __version__
from .._base import Consumer, Delivery, EntityNotFound, QueueStats, Session
from .._buffer import DeliveryBuffer
from .._memory._entities import full_queue_error
from . import _entities as entities
from . import _messages as messages
from ._doorbell import EVERY, PUSHED, Doorbell, ring
from ._options import SqliteOptions
from ._store import Store, Tx

if TYPE_CHECKING:  # annotations only
    from .._base import ExchangeType, OutgoingMessage, QueueSpec

__all__ = ["open_sqlite_session"]

_PRODUCT = "kiwitrio-sqlite"
T = TypeVar("T")

logger = logging.getLogger("kiwitrio.connection")  # a public name (docs/configuration.md#logging)


@asynccontextmanager
async def open_sqlite_session(url: str) -> AsyncIterator[Session]:
    """Open a session on the database file named by ``url`` (``sqlite:///abs/path.db``).

    Leaving the block closes it: its unsettled deliveries go back to their queues and its
    exclusive queues are deleted, as when a RabbitMQ connection closes. Raises
    :class:`ValueError` for a bad URL, :class:`~kiwitrio.ConnectionFailed` (its subclass
    SchemaMismatch) for a file it cannot use. Cancellation: the close is shielded.
    """
    options = SqliteOptions.from_url(url)
    me = uuid.uuid4().hex
    try:
        store = await Store.open(options.path, me, liveness=options.liveness,
                                 synchronous=options.synchronous)
    except OSError as exc:
        raise ConnectionFailed(f"cannot open {options.path}: {exc}") from exc
    try:
        bell = Doorbell.bind(options.path, me)
    except BaseException:
        await store.aclose()
        raise
    session = _SqliteSession(store, bell, options)
    try:
        await session._call(lambda tx: entities.register_connection(
            tx, options.login, os.getpid(), bell.address))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session._serve)
            nursery.start_soon(session._listen)
            try:
                yield session
            finally:
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await session._close()
            await store.aclose()
            bell.close()


class _SqliteSession(Session):
    """One connection (a ``connections`` row) to the database file."""

    def __init__(self, store: Store, bell: Doorbell, options: SqliteOptions) -> None:
        self.server_properties = {"product": _PRODUCT, "version": __version__,
                                  "path": options.path}
        #: The user in the URL (``sqlite://alice@/path``), ``guest`` by default: stamped as each
        #: published message's ``user_id``. Unchecked: whoever can write the file can forge
        #: it, unlike on RabbitMQ.
        self.login: str | None = options.login
        self._store = store
        self._bell = bell
        self._options = options
        self._closed = False
        self._lost: BaseException | None = None
        self._lost_event = trio.Event()
        self._consumers: dict[str, _SqliteConsumer] = {}
        #: Set to make the serving loop look at the file now (a ring, room, a new consumer).
        self._wake = trio.Event()
        #: The consumers that rings named since the serving loop last looked (see
        #: :meth:`_fill`); EVERY among them: look at every consumer (a ring said so, room
        #: was made, a consumer came, or the poll interval is up).
        self._rung: set[str] = set()
        #: Set when rings may have been lost (the doorbell overflowed, or the poll interval
        #: is up): every sole consumer then reads what may have been pushed to it.
        self._reread_pushed = False

    # -- plumbing ------------------------------------------------------------------------

    async def _call(self, work: Callable[[Tx], T], *, durable: bool = True) -> T:
        """Run ``work`` in a transaction, then ring the doorbells it asks for.

        ``durable=False`` for what a power loss may undo without losing a message (claims,
        settlements, housekeeping: at worst a message is delivered again); see
        :meth:`Store.run`.
        """
        try:
            result, bells = await self._store.run(work, durable=durable)
        except entities.DeclaredDead:
            self._become_lost()
            self._check_open()
            raise
        mine = bells.pop(self._bell.address, None)
        if mine is not None:
            self._rung |= mine
            self._wake.set()
        ring(bells)
        return result

    async def _enter(self, work: Callable[[Tx], T], *, durable: bool = True) -> T:
        """:meth:`_call` for a public method: CommunicatorClosed once closed or lost."""
        await trio.lowlevel.checkpoint()
        self._check_open()
        return await self._call(work, durable=durable)

    def _check_open(self) -> None:
        if self._closed:
            raise CommunicatorClosed("the sqlite broker session is closed")
        if self._lost is not None:
            raise CommunicatorClosed("the sqlite broker session was lost") from self._lost

    # -- the Session interface ---------------------------------------------------------------

    async def declare_exchange(self, name: str, type: ExchangeType, *, durable: bool,
                               auto_delete: bool) -> None:
        await self._enter(lambda tx: entities.declare_exchange(
            tx, name, type, durable=durable, auto_delete=auto_delete))

    async def declare_queue(self, spec: QueueSpec) -> str:
        return await self._enter(lambda tx: entities.declare_queue(tx, spec))

    async def delete_queue(self, name: str, *, if_unused: bool = False) -> int:
        def work(tx: Tx) -> int:
            if tx.one("SELECT 1 FROM queues WHERE name = ?", [name]) is None:
                return 0
            entities.accessible_queue(tx, name)
            consumers = tx.one("SELECT count(*) FROM consumers WHERE queue = ?", [name])[0]
            if if_unused and consumers:
                raise InUseError(f"the queue {name!r} has consumers", kind="queue",
                                 name=name, consumers=int(consumers))
            return entities.drop_queue(tx, name)

        count = await self._enter(work)
        for consumer in [c for c in self._consumers.values() if c.queue == name]:
            consumer._end()
        return count

    async def purge_queue(self, name: str) -> int:
        def work(tx: Tx) -> int:
            entities.accessible_queue(tx, name)
            return tx.execute("DELETE FROM messages WHERE queue = ? AND holder IS NULL",
                              [name]).rowcount

        return await self._enter(work)

    async def inspect_queue(self, name: str) -> QueueStats | None:
        def work(tx: Tx) -> QueueStats | None:
            try:
                ready, consumers = messages.queue_counts(tx, name)
            except EntityNotFound:
                return None
            entities.use_queue(tx, name)  # a passive declare renews x-expires
            return QueueStats(messages=ready, consumers=consumers)

        return await self._enter(work)

    async def delete_exchange(self, name: str, *, if_unused: bool = False) -> None:
        await self._enter(lambda tx: entities.delete_exchange(tx, name, if_unused=if_unused))

    async def bind_queue(self, queue: str, exchange: str, routing_key: str) -> None:
        await self._enter(lambda tx: entities.bind(tx, queue, exchange, routing_key))

    async def unbind_queue(self, queue: str, exchange: str, routing_key: str) -> None:
        await self._enter(lambda tx: entities.unbind(tx, queue, exchange, routing_key))

    async def publish(self, exchange: str, routing_key: str, message: OutgoingMessage, *,
                      mandatory: bool) -> None:
        """Store a copy in every matching queue; returns once that committed (the confirm).
        A persistent message's commit is on the disk by then (fsync); a transient one's
        survives any process being killed, as on RabbitMQ not necessarily a power loss.

        NegativeAck if a full ``reject-publish`` queue refused it (the others have it), as
        RabbitMQ nacks it.

        Cancellation: once the transaction started it commits; the message may be sent.
        """
        full = await self._enter(lambda tx: messages.publish(
            tx, exchange, routing_key, message, mandatory=mandatory,
            user_id=self.login), durable=message.persistent)
        if full:
            raise full_queue_error(full)

    async def get(self, queue: str) -> Delivery | None:
        def work(tx: Tx) -> list[messages.Stored]:
            entities.check_registered(tx)
            entities.accessible_queue(tx, queue)
            entities.use_queue(tx, queue)
            messages.expire_messages(tx)
            return messages.claim(tx, queue, None, 1)

        got = await self._enter(work, durable=False)
        return _SqliteDelivery(got[0], self, None) if got else None

    async def consume(self, queue: str, *, prefetch_count: int,
                      exclusive: bool = False) -> Consumer:
        """Subscribe; ``prefetch_count`` must be at least 1."""
        if prefetch_count < 1:
            raise ValueError("prefetch_count must be at least 1")
        consumer_id = uuid.uuid4().hex

        def work(tx: Tx) -> bool:
            entities.check_registered(tx)
            queue_row = entities.accessible_queue(tx, queue)
            entities.reap_consumers_of(tx, queue)
            others = [bool(row[0]) for row in tx.execute(
                "SELECT exclusive FROM consumers WHERE queue = ?", [queue])]
            # RabbitMQ's rules for exclusive consumers (ACCESS_REFUSED either way).
            if others and (exclusive or any(others)):
                raise DeliveryFailed(f"ACCESS_REFUSED: queue {queue!r} in exclusive use")
            tx.execute("INSERT INTO consumers VALUES (?, ?, ?, ?)",
                       [consumer_id, tx.me, queue, exclusive])
            entities.use_queue(tx, queue)
            # Nobody on another connection can take this queue's messages: an exclusive
            # consumer's, or an exclusive queue's (ours, since it is accessible).
            return exclusive or bool(queue_row["exclusive"])

        sole = await self._enter(work)
        consumer = _SqliteConsumer(self, consumer_id, queue, prefetch_count, sole=sole)
        self._consumers[consumer_id] = consumer
        self._look_at_everything()
        return consumer

    async def aclose(self) -> None:
        """Close: requeue unsettled deliveries, end consumers, delete exclusive queues.
        Idempotent; shielded from cancellation."""
        with trio.CancelScope(shield=True):
            await self._close()

    async def wait_lost(self) -> BaseException:
        """The reason, once other connections declared this one dead (its heartbeat stopped
        for longer than the liveness timeout, e.g. a process suspended that long)."""
        await self._lost_event.wait()
        assert self._lost is not None
        return self._lost

    async def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        unread = {c.id: c.last_pushed for c in self._consumers.values()}
        for consumer in list(self._consumers.values()):
            consumer._end()
        if self._lost is None:
            def work(tx: Tx) -> None:
                for cid, last in unread.items():  # back as never delivered, not redelivered
                    messages.unpush(tx, cid, after=last)
                entities.drop_connection(tx, tx.me)

            await self._call(work, durable=False)

    # -- consumers' side ----------------------------------------------------------------------

    async def _cancel_consumer(self, consumer: _SqliteConsumer, buffered: list[int]) -> None:
        def work(tx: Tx) -> None:
            tx.execute("DELETE FROM consumers WHERE id = ?", [consumer.id])
            messages.requeue_many(tx, buffered)
            messages.unpush(tx, consumer.id, after=consumer.last_pushed)
            entities.consumer_left(tx, consumer.queue)

        if not (self._closed or self._lost):
            await self._call(work, durable=False)

    async def _settle(self, delivery: _SqliteDelivery, outcome: str) -> None:
        consumer = delivery._consumer

        def work(tx: Tx) -> None:
            messages.settle(tx, delivery._stored.id, outcome)
            if outcome == "requeue" and consumer is not None and consumer.sole:
                # Queue order: what was pushed to it after this one lines up behind it.
                messages.unpush(tx, consumer.id, after=consumer.last_pushed)

        await self._call(work, durable=False)
        if delivery._consumer is not None:
            delivery._consumer._in_flight -= 1
            self._look_at_everything()

    def _look_at_everything(self) -> None:
        self._rung.add(EVERY)
        self._wake.set()

    async def _listen(self) -> None:
        """Turn doorbell rings into wake-ups of the serving loop."""
        while True:
            named = await self._bell.wait()  # not ``|=`` across the await: _fill swaps the set
            self._rung |= named
            if EVERY in named:
                self._reread_pushed = True
            self._wake.set()

    async def _serve(self) -> None:
        """Forever: hand ready messages to consumers with room, then sleep until woken (a
        ring, room made here), the next message expiry, or the poll interval (the safety
        net), keeping the heartbeat and reaping on every tick."""
        tick = min(self._options.poll, self._options.liveness / 4)
        next_tick = -math.inf
        next_expiry = math.inf
        while True:
            self._wake = trio.Event()
            if trio.current_time() >= min(next_tick, next_expiry):
                next_expiry = await self._housekeep(tick)
                next_tick = trio.current_time() + tick
                self._rung.add(EVERY)  # the safety net
                self._reread_pushed = True
            if self._lost is not None:
                return
            try:
                await self._fill()
            except CommunicatorClosed:
                if self._lost is None:
                    raise
                return
            with trio.move_on_at(min(next_tick, next_expiry)):
                await self._wake.wait()

    async def _housekeep(self, tick: float) -> float:
        """Heartbeat, reap dead connections, expire messages and queues; the Trio time of
        the next message expiry."""
        def work(tx: Tx) -> tuple[bool, float | None]:
            alive = entities.heartbeat(tx)
            if alive:
                entities.reap_connections(tx, probe_after=tick * 1.5)
                messages.expire_messages(tx)
                entities.expire_queues(tx)
            return alive, messages.next_expiry(tx) if alive else None

        alive, expiry = await self._call(work, durable=False)
        await self._store.checkpoint()
        if not alive:
            self._become_lost()
            return math.inf
        if expiry is None:
            return math.inf
        return trio.current_time() + max(0.0, expiry - time.time())

    def _become_lost(self) -> None:
        if self._lost is not None:
            return
        self._lost = ConnectionFailed(
            "the other connections to the sqlite file declared this one dead (no heartbeat "
            f"for {self._options.liveness} s): its deliveries went back to their queues")
        for consumer in list(self._consumers.values()):
            consumer._end()
        self._lost_event.set()

    async def _fill(self) -> None:
        """Hand messages to every consumer with room: read those pushed to it (see
        :mod:`._messages`), then claim ready ones, in one transaction.

        Only the consumers that rings named since the last look, or all of them after
        :data:`EVERY`, are looked at. One that a ring named, and that nobody else competes
        with, has a message waiting: its claim goes ahead. For the others a look (no write
        lock) comes first: every consumer of a queue is rung for each publish to it, and
        most rings find the message taken already, by another worker.
        """
        rung, self._rung = self._rung, set()
        everything = EVERY in rung
        wanting = {cid: c.room() for cid, c in self._consumers.items()
                   if (everything or cid in rung or PUSHED + cid in rung) and c.room() > 0}
        to_read = self._pushed_to_read(rung, wanting)
        # Pushed to only: nothing to claim.
        wanting = {cid: room for cid, room in wanting.items() if everything or cid in rung}
        certain = {cid for cid in wanting if cid in rung and self._consumers[cid].sole}
        unsure = [cid for cid in wanting if cid not in certain]
        # Taken now: one that ends while we claim is still claimed for, and what it gets is
        # given back (the orphans below).
        queues = {cid: self._consumers[cid].queue for cid in wanting}
        if unsure or to_read:
            def look(tx: Tx) -> tuple[dict[str, list[messages.Stored]],
                                      tuple[set[str], set[str]]]:
                pushed = messages.read_pushed(tx, to_read)
                ready_and_gone = (messages.consumers_with_ready(tx, unsure) if unsure
                                  else (set(), set()))
                # Only once both reads are done (one that finds the file busy leaves no
                # trace), and within the read, under the store's lock: a requeue's unpush
                # (_settle) must not hand back one that was read.
                for cid, (_, room) in to_read.items():
                    if (reader := self._consumers.get(cid)) is not None:
                        stored = pushed.get(cid, [])
                        if stored:
                            reader.last_pushed = stored[-1].id
                        reader.unread_pushes = len(stored) == room  # maybe more
                return pushed, ready_and_gone

            looked = await self._store.read(look)
            if looked is None:  # could not look: claim for all, read next time
                self._rung |= {PUSHED + cid for cid in to_read}
            else:
                pushed, (ready, gone) = looked
                for cid in gone:
                    if cid in self._consumers:
                        self._consumers[cid]._end()
                await self._hand_pushed(pushed)
                # What room is left after the pushed ones, for those with something to claim.
                left = {cid: c.room() for cid in wanting
                        if (cid in certain or cid in ready)
                        and (c := self._consumers.get(cid)) is not None}
                wanting = {cid: room for cid, room in left.items() if room > 0}
        if not wanting:
            return

        def work(tx: Tx) -> tuple[dict[str, list[messages.Stored]], list[str]]:
            claimed: dict[str, list[messages.Stored]] = {}
            ended: list[str] = []
            for cid, room in wanting.items():
                got = messages.claim_for_consumer(tx, cid, queues[cid], room)
                if got is None:
                    ended.append(cid)
                else:
                    claimed[cid] = got
            return claimed, ended

        claimed, ended = await self._call(work, durable=False)
        for cid in ended:
            if cid in self._consumers:
                self._consumers[cid]._end()
        orphans: list[int] = []
        for cid, stored in claimed.items():
            consumer = self._consumers.get(cid)
            for one in stored:
                if consumer is None or not consumer._offer(one):
                    orphans.append(one.id)
        if orphans:  # cancelled meanwhile: give them back
            await self._call(lambda tx: messages.requeue_many(tx, orphans), durable=False)

    def _pushed_to_read(self, rung: set[str],
                        wanting: dict[str, int]) -> dict[str, tuple[int, int]]:
        """The sole consumers that should read what was pushed to them, each with (the last
        pushed id it read, its room): those a ring named as pushed to, and those that may
        have unread ones (a ring came while they had no room, their last read filled their
        room, or rings may have been lost). Not every consumer after every ack: most have
        nothing unread, and each read costs a catch-up with the file."""
        reread, self._reread_pushed = self._reread_pushed, False
        for cid, consumer in self._consumers.items():
            if reread or (PUSHED + cid in rung and consumer.room() == 0):
                consumer.unread_pushes = True  # read once it has room
        return {cid: (consumer.last_pushed, room) for cid, room in wanting.items()
                if (consumer := self._consumers[cid]).sole
                and (PUSHED + cid in rung or consumer.unread_pushes)}

    async def _hand_pushed(self, pushed: dict[str, list[messages.Stored]]) -> None:
        """Offer the messages read as pushed to their consumers; those past their time to
        live (read late: the consumer had no room) go back to expire there."""
        expired: dict[str, list[int]] = {}
        for cid, stored in pushed.items():
            consumer = self._consumers.get(cid)
            if consumer is None:
                continue  # ended: its cancel (or its queue's end) took care of them
            for one in stored:
                if one.expired:
                    expired.setdefault(cid, []).append(one.id)
                else:
                    consumer._offer(one)
        if expired:
            def work(tx: Tx) -> None:
                for cid, ids in expired.items():
                    messages.unpush(tx, cid, ids=ids)

            await self._call(work, durable=False)


class _SqliteConsumer(Consumer):
    """A subscription (a ``consumers`` row); at most ``prefetch_count`` unsettled."""

    def __init__(self, session: _SqliteSession, consumer_id: str, queue: str,
                 prefetch_count: int, *, sole: bool) -> None:
        self.id = consumer_id
        self.queue = queue
        #: Whether it is the only consumer that can take its queue's messages.
        self.sole = sole
        self._session = session
        self._buffer = DeliveryBuffer(prefetch_count)
        self.deliveries = self._buffer.deliveries
        self._prefetch_count = prefetch_count
        self._in_flight = 0
        self._stopped = False
        #: The id of the last message pushed to it that it read (ids grow: see _messages).
        self.last_pushed = -1
        #: Whether messages may have been pushed to it that it has not read: a ring for it
        #: came while it had no room, or a read filled its room.
        self.unread_pushes = False

    def room(self) -> int:
        return 0 if self._stopped else self._prefetch_count - self._in_flight

    def _offer(self, stored: messages.Stored) -> bool:
        if self._stopped:
            return False
        self._buffer.put_nowait(_SqliteDelivery(stored, self._session, self))
        self._in_flight += 1
        return True

    async def cancel(self) -> None:
        """Stop deliveries and requeue buffered ones; the channel then ends. Idempotent.

        Cancellation: the consumer is stopped at once; giving back runs to its end.
        """
        if self._stopped:
            await trio.lowlevel.checkpoint()
            return
        buffered = [d._stored.id for d in self._buffer.take_back()
                    if isinstance(d, _SqliteDelivery)]
        self._end()
        with trio.CancelScope(shield=True):
            await self._session._cancel_consumer(self, buffered)

    def _end(self) -> None:
        """End the channel: receivers see what is still buffered, then ``EndOfChannel``."""
        self._stopped = True
        self._session._consumers.pop(self.id, None)
        self._buffer.end()


#: The Delivery attributes stored as they are in the row's properties.
_COPIED_PROPERTIES = ("content_type", "correlation_id", "reply_to", "exchange", "routing_key",
                      "user_id")


class _SqliteDelivery(Delivery):
    """A message row this connection holds."""

    def __init__(self, stored: messages.Stored, session: _SqliteSession,
                 consumer: _SqliteConsumer | None) -> None:
        props: dict[str, Any] = dict(stored.properties)
        for name in _COPIED_PROPERTIES:
            setattr(self, name, props[name])
        self.body = stored.body
        # A private copy: a receiver editing its headers must not touch other copies.
        self.headers = copy.deepcopy(props["headers"])
        self.redelivered = stored.redelivered
        self._stored = stored
        self._session = session
        self._consumer = consumer
        self._settled = False

    @property
    def stale(self) -> bool:
        return self._session._lost is not None

    @property
    def settled(self) -> bool:
        # A closed session gave its deliveries back: they are settled for us.
        return self._settled or self._session._closed

    async def ack(self) -> None:
        """Delete the message. Cancellation: once started, the ack commits."""
        await self._finish("ack")

    async def reject(self, *, requeue: bool) -> None:
        """Requeue or dead-letter it. Cancellation: once started, it commits."""
        await self._finish("requeue" if requeue else "dead-letter")

    async def _finish(self, outcome: str) -> None:
        await trio.lowlevel.checkpoint()
        if self.settled:
            return
        if self.stale:
            # As on RabbitMQ after a lost connection: nothing to settle any more.
            self._settled = True
            logger.warning("could not settle a delivery: the other connections to the sqlite "
                           "file declared this one dead and gave the message back")
            return
        self._session._check_open()
        self._settled = True
        await self._session._settle(self, outcome)
