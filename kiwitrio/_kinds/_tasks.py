"""Tasks: a durable work queue with results.

A task queue is a durable queue bound to the (direct) task exchange under its own name, with a
dead-letter queue ``<name>.dead-letter`` beside it for messages that cannot be decoded.
Tasks are persistent messages published with confirms and ``mandatory``.

A delivered task stays unacknowledged while a subscriber works on it; the result (or the
exception) is published to the sender's reply queue first and the task acknowledged after, so
a worker that dies at any point leaves the task to be redelivered. The broker hands an
unacknowledged task to one consumer only, so no task is processed by two workers at once.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractContextManager, asynccontextmanager
from typing import Any

import trio

from .. import _metrics, _tracing
from .._backends import (
    Consumer,
    Delivery,
    EntityNotFound,
    OutgoingMessage,
    QueueSpec,
    dead_letter_to,
)
from .._errors import DecodeError, DuplicateSubscriberIdentifier, QueueEmpty, TaskRejected
from .._ids import new_id
from .._saferepr import describe_error
from . import _pipeline as pipeline
from ._admin import dead_letter_queue_name, record_task_queue
from ._context import Context, handling
from ._control import InFlightTask
from ._durable import DurableQueues
from ._envelopes import exception_envelope, pending_envelope, result_envelope
from ._invoke import call_subscriber, check_subscriber_signature
from ._leases import LeaseKeeper, TaskLease
from ._nacks import publish_until_taken
from ._pulled import IncomingTask, TaskIterator
from ._redelivery import TASK_ID_HEADER, Redeliveries, task_id_of
from ._replies import ReplyRouter, ResultHandle

__all__ = ["TaskQueue", "TaskSubscriber"]

logger = logging.getLogger("kiwitrio.tasks")  # a public name (docs/configuration.md#logging)

#: How long a task the broker refuses (its queue failing over to another node, or full) is
#: published again before ``task_send`` raises the refusal.
SEND_REFUSED_FOR = 10.0

TaskSubscriber = Callable[[Any, Any], Any]

_MISSING: Any = object()


def dead_letter_exchange_name(task_exchange: str) -> str:
    return f"{task_exchange}.dead-letter"


def _task_id(delivery: Delivery) -> str:
    """The task's id (see _redelivery); for a task without one (a kiwiPy sender's task sent
    with no_reply), an id that stays the same while this process holds the delivery."""
    return task_id_of(delivery) or f"no-reply-{id(delivery):x}"


class TaskQueue:
    """A named, durable task queue: send tasks to it, subscribe to it, or pull from it.

    Get one with :meth:`Communicator.task_queue`; the communicator's own ``task_send`` and
    ``add_task_subscriber`` use its default queue.
    """

    def __init__(self, ctx: Context, replies: ReplyRouter, *, name: str, exchange: str,
                 prefetch_count: int, durable: DurableQueues | None = None) -> None:
        if prefetch_count < 1:
            raise ValueError("prefetch_count must be at least 1")
        self.ctx = ctx
        #: How this queue, its dead-letter queue and its lease queue are declared.
        self.durable = ctx.durable if durable is None else durable
        self.replies = replies
        self.name = name
        self.exchange = exchange
        self.prefetch_count = prefetch_count
        self._subscribers: dict[Any, TaskSubscriber] = {}
        #: Identifiers of the subscribers that send "pending" replies.
        self._pending_replies: set[Any] = set()
        self._consumer: Consumer | None = None
        #: Tasks taken in pull mode and not settled yet (settled at the latest on close).
        self._pulled: dict[IncomingTask, None] = {}
        #: Tasks a subscriber works on now (what inspect reports, with the pulled ones).
        self._running: dict[TaskLease, None] = {}
        self._lease_keeper = (
            None if ctx.task_lease is None else LeaseKeeper(self, ctx.task_lease))
        self._lock = trio.Lock()
        #: How log lines name a message of this queue.
        self._what = f"task on {name!r}"
        self._redeliveries = Redeliveries(self._what, self.durable.limit, ctx.finished_tasks)

    async def declare(self) -> None:
        """Declare the queue, its dead-letter queue and their bindings (idempotent)."""
        session = self.ctx.session
        # Whoever creates the queue lists it in the catalogue (kiwitrio status reads it).
        is_new = await session.inspect_queue(self.name) is None
        dlx = dead_letter_exchange_name(self.exchange)
        dead_letters = await session.declare_queue(QueueSpec(
            dead_letter_queue_name(self.name), durable=True, arguments=self.durable.arguments()
        ))
        await session.bind_queue(dead_letters, dlx, self.name)
        await session.declare_queue(QueueSpec(
            self.name, durable=True,
            arguments={**dead_letter_to(dlx), **self.durable.task_queue_arguments()},
        ))
        await session.bind_queue(self.name, self.exchange, self.name)
        if is_new:
            await record_task_queue(session, self.exchange, self.name,
                                    dict(self.durable.testing_arguments))

    # -- sending ----------------------------------------------------------------------------

    async def task_send(self, task: Any, no_reply: bool = False) -> ResultHandle:
        """Send ``task``; returns once the broker has it safely (persisted and confirmed).

        Returns a :class:`ResultHandle`: ``await`` it for the result (``None`` at once with
        ``no_reply=True``). Raises :class:`TypeError` if the task cannot be encoded,
        :class:`~kiwitrio.UnroutableError` if the queue does not exist,
        :class:`~kiwitrio.DeliveryFailed` if the broker refused the task (a negative confirm)
        each time it was published for ``SEND_REFUSED_FOR`` (10) seconds, and
        :class:`~kiwitrio.SendOutcomeUnknown` if the connection went (without reconnection)
        or the communicator closed before the broker confirmed the task: it may still run.
        Cancelling the call abandons the wait; the task may or may not have reached the
        broker.
        """
        self.ctx.check_open()
        body = self.ctx.encode(task)
        started = _metrics.now()
        if no_reply:
            task_id = {TASK_ID_HEADER: new_id()}
            with self._tracing_send(None) as headers:
                await self._publish(OutgoingMessage(body, self.ctx.content_type,
                                                    headers={**headers, **task_id},
                                                    persistent=True))
            _metrics.record_sent("task", started)
            return ResultHandle.completed(None)
        reply_to, handle = await self.replies.expect()
        # A task that wants a result is known by its correlation id: the one its handle has.
        task_id = {TASK_ID_HEADER: handle.correlation_id or new_id()}
        try:
            with self._tracing_send(handle.correlation_id) as headers:
                await self._publish(OutgoingMessage(
                    body, self.ctx.content_type, correlation_id=handle.correlation_id,
                    reply_to=reply_to, headers={**headers, **task_id}, persistent=True,
                ))
        except BaseException:
            self.replies.forget(handle)
            raise
        _metrics.record_sent("task", started)
        return handle

    def _tracing_send(self, correlation_id: str | None,
                      ) -> AbstractContextManager[Mapping[str, str]]:
        """The tracing span of a send (kiwitrio/_tracing.py); it gives the headers to add."""
        return _tracing.sending("task", self.name, destination=self.name,
                                routing_key=self.name, conversation_id=correlation_id)

    async def _publish(self, message: OutgoingMessage) -> None:
        try:
            await self._publish_until_taken(message)
        except EntityNotFound:
            # The exchange was deleted under us (an auto-delete one in testing mode, or by
            # hand): declare what we need again, once, and retry.
            await self.ctx.redeclare_exchanges()
            await self.declare()
            await self._publish_until_taken(message)

    async def _publish_until_taken(self, message: OutgoingMessage) -> None:
        # Refused while the queue fails over to another node: published again (_nacks).
        await publish_until_taken(self.ctx.session, self.exchange, self.name, message,
                                  within=SEND_REFUSED_FOR, what=f"a task for queue {self.name!r}")

    # -- push mode --------------------------------------------------------------------------

    async def add_task_subscriber(self, subscriber: TaskSubscriber,
                                  identifier: Any = None, *,
                                  pending_replies: bool = False) -> Any:
        """Call ``subscriber(communicator, task)`` for tasks from this queue.

        Returns the identifier (a new one if ``None``). Raises
        :class:`~kiwitrio.DuplicateSubscriberIdentifier` if it is taken. With
        ``pending_replies``, the sender is sent a "pending" reply each time the subscriber's
        outcome turns out to be a future still to be waited for (see
        :attr:`ResultHandle.pending_replies`).
        """
        self.ctx.check_open()
        check_subscriber_signature(subscriber, "task")
        if identifier is None:
            identifier = f"task-subscriber-{id(subscriber):x}-{len(self._subscribers)}"
            while identifier in self._subscribers:
                identifier += "+"
        if identifier in self._subscribers:
            raise DuplicateSubscriberIdentifier(f"task subscriber {identifier!r} exists")
        self._subscribers[identifier] = subscriber
        if pending_replies:
            self._pending_replies.add(identifier)
        try:
            await self._ensure_consuming()
        except BaseException:
            del self._subscribers[identifier]
            self._pending_replies.discard(identifier)
            raise
        return identifier

    async def remove_task_subscriber(self, identifier: Any) -> None:
        """Remove a subscriber; with none left, stop taking tasks from the queue.

        Tasks already being processed run to completion. Raises :class:`ValueError` if
        there is no such subscriber.
        """
        self.ctx.check_open()
        if identifier not in self._subscribers:
            raise ValueError(f"no task subscriber {identifier!r}")
        del self._subscribers[identifier]
        self._pending_replies.discard(identifier)
        async with self._lock:
            if not self._subscribers and self._consumer is not None:
                consumer, self._consumer = self._consumer, None
                await consumer.cancel()

    async def _ensure_consuming(self) -> None:
        async with self._lock:
            if self._consumer is None:
                self._consumer = await self.ctx.session.consume(
                    self.name, prefetch_count=self.prefetch_count
                )
                self.ctx.nursery.start_soon(
                    self._dispatch, self._consumer, name=f"kiwitrio tasks {self.name}"
                )

    async def _dispatch(self, consumer: Consumer) -> None:
        await pipeline.serve(self.ctx, consumer, self._what, self._handle,
                             self._reject_undecodable)

    async def _handle(self, delivery: Delivery, task: Any) -> None:
        if await self._settled_before_running(delivery):
            return
        keeper = self._lease_keeper
        lease = TaskLease(self.ctx, keeper, delivery)
        if keeper is not None:
            keeper.track(lease)
        self._running[lease] = None
        try:
            with handling(delivery):
                envelope = await self._run_subscribers(task, delivery)
        except trio.Cancelled:
            await lease.give_back()
            raise
        finally:
            self._running.pop(lease, None)
            if keeper is not None:
                keeper.untrack(lease)
        if envelope is None:
            await lease.give_back()  # every subscriber declined
            return
        await lease.finish(self._reply(delivery, envelope))

    async def _reply(self, delivery: Delivery, envelope: dict[str, Any]) -> None:
        # Remembered first: once the reply is out, a redelivery must find the task finished.
        body = self.replies.encode(delivery, envelope)
        await self._redeliveries.remember(delivery, body)
        if body is not None:
            await self.replies.send_encoded(delivery, body, persistent=True, must_store=True)

    async def finish_task(self, delivery: Delivery, envelope: dict[str, Any]) -> None:
        """Reply with ``envelope`` (remembered as finished first), then acknowledge."""
        await self.ctx.finish(delivery, self._reply(delivery, envelope))

    def release_pulled(self, task: IncomingTask) -> None:
        self._pulled.pop(task, None)

    async def _settled_before_running(self, delivery: Delivery) -> bool:
        """Past its delivery limit, or finished before: see _redelivery."""
        async def refuse(error: Exception) -> None:
            await self.replies.send(delivery, exception_envelope(error), persistent=True)

        return await self._redeliveries.settled_before_running(
            delivery, functools.partial(self._answer_again, delivery), refuse)

    async def _answer_again(self, delivery: Delivery, reply: bytes) -> None:
        await self.ctx.finish(delivery, self.replies.send_encoded(delivery, reply,
                                                                  persistent=True,
                                                                  must_store=True))

    @property
    def consuming(self) -> bool:
        """True while this queue has task subscribers (it consumes the queue)."""
        return self._consumer is not None

    def in_flight(self) -> list[InFlightTask]:
        """The tasks this communicator holds from this queue now (for inspect)."""
        now = trio.current_time()
        held = [(lease.delivery, lease.started, lease.leased) for lease in self._running]
        held += [(task._delivery, task.started, False) for task in self._pulled]
        return [InFlightTask(self.name, _task_id(delivery), max(0.0, now - started), leased)
                for delivery, started, leased in held]

    async def _run_subscribers(self, task: Any, delivery: Delivery) -> dict[str, Any] | None:
        async def tell_pending() -> None:
            await self.replies.send(delivery, pending_envelope(), persistent=True)

        started = _metrics.now()
        with _tracing.processing("task", self.name, destination=self.name,
                                 headers=delivery.headers,
                                 conversation_id=delivery.correlation_id) as span:
            for identifier, subscriber in list(self._subscribers.items()):
                pending = tell_pending if identifier in self._pending_replies else None
                try:
                    result = await call_subscriber(subscriber, self.ctx.communicator, task,
                                                   on_pending=pending)
                except TaskRejected:
                    continue
                except Exception as exc:
                    logger.info("task subscriber raised %s; sending it back to the sender",
                                describe_error(exc))
                    _metrics.record_handled("task", "failed", started)
                    _tracing.failed(span, exc)
                    return exception_envelope(exc)
                _metrics.record_handled("task", "done", started)
                return result_envelope(result)
        _metrics.record_handled("task", "rejected", started)
        return None

    async def _reject_undecodable(self, delivery: Delivery, reason: DecodeError) -> None:
        await self.replies.send(delivery, exception_envelope(reason), persistent=True)
        await self.ctx.reject_visibly(delivery, self._what, reason)

    # -- pull mode --------------------------------------------------------------------------

    @asynccontextmanager
    async def next_task(
        self, timeout: float | None = None  # noqa: ASYNC109 - kiwiPy's signature
    ) -> AsyncIterator[IncomingTask]:
        """Take the next task, waiting up to ``timeout`` seconds (``None``: do not wait).

        Use as ``async with queue.next_task() as task:``. On leaving the block the task is
        finished if its outcome was set (``task.process().set_result(...)``), else requeued;
        likewise if the block raises. Raises :class:`~kiwitrio.QueueEmpty` if no task came.
        """
        self.ctx.check_open()
        task = await self.take_task(timeout)
        try:
            yield task
        finally:
            with trio.CancelScope(shield=True):
                await task.settle()

    async def take_task(self, wait: float | None = None) -> IncomingTask:
        """Take the next task, waiting up to ``wait`` seconds (``None``: do not wait), and
        hold it until :meth:`IncomingTask.settle` (or until the communicator closes). The
        hook that :meth:`next_task` and blocking front ends build on; raises
        :class:`~kiwitrio.QueueEmpty` if no task came.
        """
        deadline = trio.current_time() + (wait or 0.0)
        while True:
            delivery = await self.ctx.session.get(self.name)
            if delivery is None and wait:
                delivery = await self._wait_for_delivery(deadline)
            if delivery is None:
                raise QueueEmpty(f"no task in {self.name!r}")
            if await self._settled_before_running(delivery):
                continue
            try:
                task = IncomingTask(self, delivery, await self.ctx.decode(delivery))
            except trio.Cancelled:
                await self.ctx.give_back(delivery)
                raise
            except DecodeError as exc:
                await self._reject_undecodable(delivery, exc)
                continue
            self._pulled[task] = None
            return task

    async def _wait_for_delivery(self, deadline: float) -> Delivery | None:
        consumer = await self.ctx.session.consume(self.name, prefetch_count=1)
        try:
            with trio.move_on_at(deadline):
                return await consumer.deliveries.receive()
            return None
        finally:
            with trio.CancelScope(shield=True):
                await consumer.cancel()

    async def settle_pulled(self) -> None:
        """Settle every task taken in pull mode and not settled yet: finish those whose
        outcome is set, requeue the others. The communicator does this when it closes."""
        for task in list(self._pulled):
            await task.settle()

    def __aiter__(self) -> AsyncIterator[IncomingTask]:
        """Iterate over the tasks in the queue now (pull mode), ending when it is empty.

        Handle each with ``async with task.processing() as outcome:``, which settles it. A
        task not settled is settled when the loop moves on to the next one; after a
        ``break``, it stays reserved until :meth:`settle_pulled` or until the communicator
        closes, and is then finished (if its outcome was set) or requeued.
        """
        return TaskIterator(self)
