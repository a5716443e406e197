"""Task leases: tasks that run longer than the broker lets a delivery stay unacknowledged.

RabbitMQ closes a channel whose delivery stays unacknowledged past its consumer timeout
(30 minutes by default) and requeues the delivery, so a long task would run twice. A task
whose subscriber is still busy after ``task_lease`` seconds is therefore moved off the
delivery clock onto a *lease*:

1. a persistent copy of the task (same body, reply address and correlation id) is published,
   with a confirm, to this worker's own lease queue ``<queue>.lease.<worker id>``;
2. then the original delivery is acknowledged.

The lease queue holds each copy for ``task_lease`` seconds (``x-message-ttl``) and then
dead-letters it back into the task queue. While the worker lives, it renews its leases every
third of that time: it publishes fresh copies of the tasks still running, then takes the older
copies off the head of its queue (``basic.get`` + ack), so no copy ever expires. When the task
finishes, its copy is removed at once. If the worker dies, renewal stops, the last copy
expires and goes back to the task queue, and another worker runs the task (the subscriber
sees ``current_delivery().redelivered``). A task is lost in no case; it runs twice only if
the worker dies in the few milliseconds between publishing a renewal and removing the older
copy, or between replying and removing the copy.

Only this worker publishes to and reads from its lease queue, so FIFO order tells the copies
apart: each carries the renewal cycle it was published in.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable
from typing import Protocol

import trio

from .._backends import Delivery, NegativeAck, OutgoingMessage, QueueSpec, dead_letter_to
from .._ids import new_id
from ._context import SHUTDOWN_GRACE, Context
from ._durable import DurableQueues
from ._nacks import publish_until_taken

__all__ = ["LeaseKeeper", "LeasedQueue", "TaskLease"]

logger = logging.getLogger("kiwitrio.tasks")  # a public name (docs/configuration.md#logging)

CYCLE_HEADER = "kiwitrio-lease-cycle"
LEASE_HEADER = "kiwitrio-lease"
#: On a task a worker handed back from its lease: it ran before, as a redelivery would have.
REDELIVERED_HEADER = "kiwitrio-redelivered"
#: How long a lease copy the broker refuses (its queue failing over) is published again:
#: within the grace a renewal or a hand-back has (SHUTDOWN_GRACE).
COPY_REFUSED_FOR = 3.0


class LeasedQueue(Protocol):
    """What a lease keeper needs of its task queue (a :class:`~kiwitrio.TaskQueue`); a
    protocol, so that this module does not import the task kind that imports it."""

    @property
    def ctx(self) -> Context: ...

    @property
    def name(self) -> str: ...

    @property
    def exchange(self) -> str: ...

    @property
    def durable(self) -> DurableQueues: ...


class LeaseKeeper:
    """The lease queue of one worker for one task queue, and the loop that keeps it.

    One loop per task queue (started with the first task) does all the lease work every
    third of the lease time: it moves the tasks that have been running for a lease time onto
    leases, and renews the leases of those still running. A task therefore moves onto a lease
    between 1 and 4/3 lease times after it started.
    """

    def __init__(self, queue: LeasedQueue, lease_seconds: float) -> None:
        self._queue = queue
        self.lease_seconds = lease_seconds
        self._lease_ms = max(1, int(lease_seconds * 1000))
        self.name = f"{queue.name}.lease.{uuid.uuid4().hex[:12]}"
        self._tracked: dict[TaskLease, None] = {}
        self._running: dict[str, OutgoingMessage] = {}
        self._cycle = 0
        self._declared = False
        self._copies_outstanding = False
        self._watching = False
        self._renew_now = trio.Event()
        self._lock = trio.Lock()

    def track(self, lease: TaskLease) -> None:
        """Watch a task that a subscriber started working on."""
        self._tracked[lease] = None
        if not self._watching:
            self._watching = True
            self._queue.ctx.nursery.start_soon(self._watch,
                                               name=f"kiwitrio leases {self._queue.name}")

    def untrack(self, lease: TaskLease) -> None:
        self._tracked.pop(lease, None)

    async def _watch(self) -> None:
        period = self.lease_seconds / 3
        while True:
            with trio.move_on_after(period):
                await self._renew_now.wait()
            self._renew_now = trio.Event()
            due = trio.current_time() - self.lease_seconds
            for lease in [lease for lease in self._tracked if lease.started <= due]:
                await lease.move_to_lease()
            if self._running or self._copies_outstanding:
                async with self._lock:
                    await self._renew()

    async def _declare(self) -> None:
        if self._declared:
            return
        await self._queue.ctx.session.declare_queue(QueueSpec(
            self.name, durable=True, arguments={
                **self._queue.durable.arguments(dead_letters=True),
                "x-message-ttl": self._lease_ms,
                **dead_letter_to(self._queue.exchange, self._queue.name),
                # Outlives its last copy: an unused lease queue is gone after its copies.
                "x-expires": self._lease_ms * 3,
            },
        ))
        self._declared = True

    async def adopt(self, delivery: Delivery) -> str:
        """Move ``delivery`` onto a lease: publish its copy, then acknowledge it."""
        async with self._lock:
            await self._declare()
            lease_id = new_id()
            copy = OutgoingMessage(
                delivery.body, delivery.content_type or self._queue.ctx.content_type,
                correlation_id=delivery.correlation_id, reply_to=delivery.reply_to,
                headers={**delivery.headers, LEASE_HEADER: lease_id}, persistent=True,
            )
            self._running[lease_id] = copy
            await self._publish(copy)
            await delivery.ack()
        logger.info("task %r runs longer than its lease: moved to %s",
                    delivery.correlation_id, self.name)
        return lease_id

    async def release(self, lease_id: str) -> None:
        """The task is done (or handed back): drop its copies now."""
        self._running.pop(lease_id, None)
        async with self._lock:
            await self._renew()

    async def hand_back(self, lease_id: str) -> None:
        """Put a leased task back in the task queue for another worker (we are closing)."""
        copy = self._running.get(lease_id)
        if copy is not None:
            returned = OutgoingMessage(
                copy.body, copy.content_type, correlation_id=copy.correlation_id,
                reply_to=copy.reply_to, headers={**copy.headers, REDELIVERED_HEADER: True},
                persistent=True,
            )
            await publish_until_taken(self._queue.ctx.session, self._queue.exchange,
                                      self._queue.name, returned, within=COPY_REFUSED_FOR,
                                      what=f"leased task {copy.correlation_id!r} handed back")
        await self.release(lease_id)

    async def _renew(self) -> None:
        # Shielded: stopping half-way could leave two copies of a task, or none.
        with trio.CancelScope(shield=True), trio.move_on_after(SHUTDOWN_GRACE):
            self._cycle += 1
            for copy in list(self._running.values()):
                await self._publish(copy)
            await self._drop_older_copies()
            self._copies_outstanding = bool(self._running)

    async def _publish(self, copy: OutgoingMessage) -> None:
        stamped = OutgoingMessage(
            copy.body, copy.content_type, correlation_id=copy.correlation_id,
            reply_to=copy.reply_to, headers={**copy.headers, CYCLE_HEADER: self._cycle},
            persistent=True,
        )
        self._copies_outstanding = True
        await publish_until_taken(self._queue.ctx.session, "", self.name, stamped,
                                  within=COPY_REFUSED_FOR,
                                  what=f"a lease copy of task {copy.correlation_id!r}")

    async def _drop_older_copies(self) -> None:
        session = self._queue.ctx.session
        while True:
            copy = await session.get(self.name)
            if copy is None:
                return
            cycle = _cycle_of(copy)
            if cycle is not None and cycle < self._cycle:
                await copy.ack()  # an older copy of ours
                continue
            if cycle is not None and copy.headers.get(LEASE_HEADER) in self._running:
                await copy.reject(requeue=True)  # the newest copies: keep them
                return
            # Not a copy this worker made (anyone with access to the broker can publish to
            # the queue): dropped, visibly. Kept, it could stop the renewal from removing
            # older copies; dead-lettered, it would go on into the task queue.
            logger.error("dropping a message on lease queue %s that is no lease copy "
                         "(correlation id %r, %d bytes)", self.name, copy.correlation_id,
                         len(copy.body))
            await copy.ack()


def _cycle_of(copy: Delivery) -> int | None:
    """The renewal cycle a lease copy was stamped with; ``None`` if it carries none."""
    value = copy.headers.get(CYCLE_HEADER)
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, str) and value.isdigit() and len(value) <= 20:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


class TaskLease:
    """What holds one task while its subscriber runs: first the delivery, maybe a lease."""

    def __init__(self, ctx: Context, keeper: LeaseKeeper | None, delivery: Delivery) -> None:
        self._ctx = ctx
        self._keeper = keeper
        self._delivery = delivery
        self._lease_id: str | None = None
        self._lock = trio.Lock()
        self.started = trio.current_time()

    @property
    def delivery(self) -> Delivery:
        return self._delivery

    @property
    def leased(self) -> bool:
        """True once the task was moved onto a lease."""
        return self._lease_id is not None

    async def move_to_lease(self) -> None:
        """Move the task onto a lease (the keeper found it running for a lease time)."""
        if self._keeper is None:
            return
        with trio.CancelScope(shield=True):
            async with self._lock:
                if (self._lease_id is None and not self._delivery.settled
                        and not self._delivery.stale):
                    self._lease_id = await self._keeper.adopt(self._delivery)

    async def finish(self, reply: Awaitable[None]) -> None:
        """Send the reply, then acknowledge the delivery or end the lease."""
        with trio.CancelScope(shield=True):
            async with self._lock:
                if self._lease_id is None or self._keeper is None:
                    await self._ctx.finish(self._delivery, reply)
                    return
                try:
                    await reply
                except NegativeAck as exc:
                    # Not stored (see _context.finish): the task goes back to its queue.
                    logger.warning("the broker refused the result of leased task %r: handing "
                                   "it back, to be done again: %s",
                                   self._delivery.correlation_id, exc)
                    await self._hand_back_leased(self._keeper, self._lease_id)
                    return
                await self._keeper.release(self._lease_id)

    async def give_back(self) -> None:
        """Return the task to the queue (subscriber cancelled, or every subscriber declined)."""
        with trio.CancelScope(shield=True):
            async with self._lock:
                if self._lease_id is None or self._keeper is None:
                    await self._ctx.give_back(self._delivery)
                    return
                await self._hand_back_leased(self._keeper, self._lease_id)

    @staticmethod
    async def _hand_back_leased(keeper: LeaseKeeper, lease_id: str) -> None:
        """Put the leased task back in its queue, within the grace (the caller holds the
        lease's lock and shields)."""
        with trio.move_on_after(SHUTDOWN_GRACE):
            await keeper.hand_back(lease_id)
