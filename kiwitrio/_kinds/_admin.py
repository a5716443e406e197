"""Queue administration: which task queues exist, how deep they are, purging and deleting.

AMQP 0-9-1 cannot list a broker's queues (only RabbitMQ's management plugin can, and it may
not be enabled), so kiwitrio keeps a *catalogue*: a durable queue ``<task exchange>.catalogue``
holding one small message per task queue, written by the communicator that created the queue.
Reading it takes every message with ``basic.get`` and gives them back afterwards (or drops the
entries of queues that are gone, and duplicates), so the catalogue stays as long as the list of
task queues. Two readers at the same instant may each see part of it; a queue is listed again
by the next read.

Everything here works on a bare :class:`~kiwitrio.backends.Session`, so that ``kiwitrio
status``, ``purge`` and ``delete`` declare nothing; :class:`~kiwitrio.Communicator` offers the
same operations on its own connection.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import trio

from .._backends import Delivery, EntityNotFound, NegativeAck, OutgoingMessage, QueueSpec, Session
from .._errors import DeliveryFailed, InUseError

__all__ = ["QueueStatus", "catalogue_name", "dead_letter_queue_name", "delete_exchange",
           "delete_queue", "purge_queue", "read_catalogue", "record_task_queue",
           "task_queue_status"]

logger = logging.getLogger("kiwitrio.tasks")  # a public name (docs/configuration.md#logging)

#: Header that marks a catalogue entry (anything else in the catalogue is dropped, logged).
ENTRY_HEADER = "x-kiwitrio-catalogue"
#: The catalogue refuses entries beyond this (``x-overflow: reject-publish``): a task queue
#: created then is not listed (a warning says so), but nothing else is affected.
MAX_ENTRIES = 10_000
#: A shutdown shield for giving held entries back.
_GIVE_BACK_GRACE = 5.0


def catalogue_name(task_exchange: str) -> str:
    return f"{task_exchange}.catalogue"


def dead_letter_queue_name(task_queue: str) -> str:
    return f"{task_queue}.dead-letter"


@dataclass(frozen=True)
class QueueStatus:
    """A task queue and its dead-letter queue, as the broker has them right now.

    ``waiting`` counts ready messages (not those held by consumers); a queue that does not
    exist has ``exists=False`` and zero counts.
    """

    name: str
    exists: bool
    waiting: int
    consumers: int
    dead_letter_queue: str
    #: Messages in the dead-letter queue (tasks that could not be decoded or were refused).
    dead_letters: int

    def as_dict(self) -> dict[str, object]:
        """JSON-ready: ``kiwitrio status --json`` prints a list of these."""
        fields = dataclasses.asdict(self)
        return {"queue": fields.pop("name"), **fields}


# -- the catalogue -------------------------------------------------------------------------------


def _catalogue_spec(task_exchange: str, extra_arguments: dict[str, object]) -> QueueSpec:
    # Declared once, not again on reconnecting: a classic queue (see _durable) whose node is
    # down must not keep a communicator from coming back on another node of a cluster.
    return QueueSpec(catalogue_name(task_exchange), durable=True, redeclare=False, arguments={
        "x-max-length": MAX_ENTRIES, "x-overflow": "reject-publish", **extra_arguments})


async def record_task_queue(session: Session, task_exchange: str, name: str,
                            extra_arguments: dict[str, object]) -> None:
    """Add ``name`` to the catalogue (called once, by whoever created the queue).

    A full catalogue is logged, not raised: the task queue itself is fine.
    """
    spec = _catalogue_spec(task_exchange, extra_arguments)
    entry = OutgoingMessage(body=name.encode(), content_type="text/plain",
                            headers={ENTRY_HEADER: 1}, persistent=True)
    try:
        catalogue = await session.declare_queue(spec)
        await session.publish("", catalogue, entry, mandatory=True)
    except NegativeAck:
        logger.warning("the catalogue %r is full (%d entries): kiwitrio status will not list "
                       "the new task queue %r", spec.name, MAX_ENTRIES, name)
    except DeliveryFailed as exc:  # its node is down, say: the task queue itself is fine
        logger.warning("could not list the new task queue %r in the catalogue %r (kiwitrio "
                       "status will not show it): %s", name, spec.name, exc)


async def read_catalogue(session: Session, task_exchange: str,
                         forget: Iterable[str] = ()) -> list[str]:
    """The task queues the catalogue names, in the order they were created.

    Entries of queues in ``forget``, duplicates and malformed entries are removed from it.
    Declares nothing: a missing catalogue is an empty list. Cancelled, it still gives the
    entries it holds back (shielded, for at most a few seconds) before the cancellation goes
    on.
    """
    catalogue = catalogue_name(task_exchange)
    if await session.inspect_queue(catalogue) is None:
        return []
    held: list[Delivery] = []
    try:
        for _ in range(MAX_ENTRIES + 1):
            delivery = await session.get(catalogue)
            if delivery is None:
                break
            held.append(delivery)
        return await _settle_entries(catalogue, held, set(forget))
    finally:
        await _give_back(held)


async def _settle_entries(catalogue: str, held: list[Delivery], forget: set[str]) -> list[str]:
    names: list[str] = []
    for delivery in held:
        name = _entry_name(delivery)
        if name is None:
            logger.warning("dropping a message that is not a catalogue entry from %r: %r",
                           catalogue, delivery.body[:80])
        if name is None or name in forget or name in names:
            await delivery.ack()
        else:
            names.append(name)
    return names


def _entry_name(delivery: Delivery) -> str | None:
    if delivery.headers.get(ENTRY_HEADER) != 1 or not 0 < len(delivery.body) <= 255:
        return None
    try:
        return delivery.body.decode()
    except UnicodeDecodeError:
        return None


async def _give_back(held: list[Delivery]) -> None:
    # Shielded: entries left unsettled would be invisible to other readers until this
    # connection closes, and a communicator's connection may live for days.
    # Last first: RabbitMQ puts each back where it was, a backend that puts requeued
    # messages at the head (the memory broker) then keeps the order too.
    with trio.CancelScope(shield=True), trio.move_on_after(_GIVE_BACK_GRACE):
        for delivery in reversed(held):
            if not delivery.settled:
                await delivery.reject(requeue=True)


# -- status ---------------------------------------------------------------------------------------


async def task_queue_status(session: Session, task_exchange: str,
                            also: Iterable[str] = ()) -> list[QueueStatus]:
    """Every catalogued task queue, and the ``also`` ones, with their depths.

    Catalogue entries whose task queue and dead-letter queue are both gone are removed.
    """
    catalogued = await read_catalogue(session, task_exchange)
    statuses = [await _status(session, name) for name in dict.fromkeys([*also, *catalogued])]
    gone = [status.name for status in statuses if status.name in catalogued
            and not status.exists and status.dead_letters == 0
            and await session.inspect_queue(status.dead_letter_queue) is None]
    if gone:
        await read_catalogue(session, task_exchange, forget=gone)
    return statuses


async def _status(session: Session, name: str) -> QueueStatus:
    dead_letter_queue = dead_letter_queue_name(name)
    stats = await session.inspect_queue(name)
    dead = await session.inspect_queue(dead_letter_queue)
    return QueueStatus(name=name, exists=stats is not None,
                       waiting=stats.messages if stats else 0,
                       consumers=stats.consumers if stats else 0,
                       dead_letter_queue=dead_letter_queue,
                       dead_letters=dead.messages if dead else 0)


# -- purge and delete ----------------------------------------------------------------------------


async def purge_queue(session: Session, name: str, *, force: bool = False) -> int:
    """Remove the waiting messages of queue ``name``; returns how many.

    Refuses (:class:`~kiwitrio.InUseError`) a queue that has consumers unless ``force``:
    they may be working through it. Tasks being worked on are not waiting and stay. Raises
    :class:`~kiwitrio.DeliveryFailed` if the queue does not exist.
    """
    stats = await session.inspect_queue(name)
    if stats is None:
        raise DeliveryFailed(f"there is no queue {name!r}")
    if stats.consumers and not force:
        raise _in_use(name, stats.consumers, "purge")
    return await session.purge_queue(name)


async def delete_queue(session: Session, task_exchange: str, name: str, *,
                       force: bool = False) -> dict[str, int]:
    """Delete queue ``name`` and, for a task queue, its dead-letter queue.

    Returns {queue: messages it held} for each queue deleted (none if neither existed).
    Refuses (:class:`~kiwitrio.InUseError`, deleting nothing) if either has consumers,
    unless ``force``. The catalogue forgets the task queue.
    """
    targets = [name]
    if not name.endswith(".dead-letter"):
        targets.append(dead_letter_queue_name(name))
    present = {}
    for target in targets:
        stats = await session.inspect_queue(target)
        if stats is not None:
            if stats.consumers and not force:
                raise _in_use(target, stats.consumers, "delete")
            present[target] = stats
    deleted = {}
    for target in present:
        try:
            deleted[target] = await session.delete_queue(target, if_unused=not force)
        except InUseError as exc:  # a consumer came after the check: the broker refused
            raise _in_use(target, exc.consumers or 1, "delete") from exc
    await read_catalogue(session, task_exchange, forget=targets)
    return deleted


async def delete_exchange(session: Session, name: str, *, force: bool = False) -> None:
    """Delete exchange ``name``; unless ``force``, refuse (:class:`~kiwitrio.InUseError`)
    one that queues are still bound to. Deleting a missing exchange is not an error."""
    try:
        await session.delete_exchange(name, if_unused=not force)
    except EntityNotFound:
        return
    except DeliveryFailed as exc:
        if not force and "in use" in str(exc):
            raise InUseError(f"the exchange {name!r} has queues bound to it (delete them "
                             "first, or force it: --force, force=True)",
                             kind="exchange", name=name) from exc
        raise


def _in_use(name: str, consumers: int, what: str) -> InUseError:
    return InUseError(
        f"the queue {name!r} has {consumers} consumer{'s' if consumers != 1 else ''}: not "
        f"going to {what} it while in use (stop them first, or force it: "
        "--force, force=True)",
        kind="queue", name=name, consumers=consumers)
