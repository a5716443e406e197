"""Tasks taken in pull mode: :class:`IncomingTask`, the :class:`TaskOutcome` a worker sets,
and iterating over the tasks of a queue."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

import trio

from .._backends import Delivery
from .._errors import CommunicatorClosed, QueueEmpty
from ._context import Context
from ._envelopes import exception_envelope, result_envelope

__all__ = ["IncomingTask", "PullSource", "TaskIterator", "TaskOutcome"]

_MISSING: Any = object()


class PullSource(Protocol):
    """What a pulled task needs of its queue (a :class:`~kiwitrio.TaskQueue`); a protocol,
    so that this module does not import the task kind that imports it."""

    @property
    def ctx(self) -> Context: ...

    async def take_task(self, wait: float | None = None) -> IncomingTask: ...

    def release_pulled(self, task: IncomingTask) -> None: ...

    async def finish_task(self, delivery: Delivery, envelope: dict[str, Any]) -> None: ...


class TaskOutcome:
    """What a pull-mode worker reports for a task: set a result or an exception, once."""

    def __init__(self) -> None:
        self._value: Any = _MISSING
        self._error: BaseException | None = None

    def done(self) -> bool:
        return self._value is not _MISSING or self._error is not None

    def set_result(self, value: Any) -> None:
        self._check_not_done()
        self._value = value

    def set_exception(self, error: BaseException) -> None:
        self._check_not_done()
        self._error = error

    def _check_not_done(self) -> None:
        if self.done():
            raise RuntimeError("the task outcome is already set")

    def envelope(self) -> dict[str, Any]:
        if self._error is not None:
            return exception_envelope(self._error)
        return result_envelope(self._value)


class IncomingTask:
    """A task taken from a queue in pull mode (:meth:`TaskQueue.next_task`, iteration).

    It is reserved for this worker until it is finished (its outcome set and the block left:
    the result goes to the sender and the task is acknowledged) or requeued.
    """

    def __init__(self, queue: PullSource, delivery: Delivery, body: Any) -> None:
        self._queue = queue
        self._delivery = delivery
        #: The task itself, decoded.
        self.body = body
        self._outcome: TaskOutcome | None = None
        #: When it was taken (trio.current_time()), for inspect's age.
        self.started = trio.current_time()

    @property
    def redelivered(self) -> bool:
        """True if the broker handed this task out before (a worker died or gave it back)."""
        return self._delivery.redelivered

    @property
    def settled(self) -> bool:
        return self._delivery.settled

    def process(self) -> TaskOutcome:
        """Start processing: returns the outcome to set. Calling it again returns the same."""
        if self._outcome is None:
            self._outcome = TaskOutcome()
        return self._outcome

    @asynccontextmanager
    async def processing(self) -> AsyncIterator[TaskOutcome]:
        """Process the task in a block; an exception escaping it becomes the task's outcome.

        On leaving the block: outcome set -> reply sent and task acknowledged; not set ->
        requeued. An ``Exception`` escaping the block is recorded as the outcome (the sender
        gets a RemoteException) and re-raised; cancellation and other BaseExceptions requeue.
        """
        outcome = self.process()
        try:
            yield outcome
        except Exception as exc:
            if not outcome.done():
                outcome.set_exception(exc)
            await self.settle()
            raise
        except BaseException:
            await self.requeue()
            raise
        await self.settle()

    async def requeue(self) -> None:
        """Give the task back to the queue for any worker."""
        if not self._delivery.settled:
            await self._queue.ctx.give_back(self._delivery)

    async def settle(self) -> None:
        """Finish the task if its outcome is set (the reply goes to the sender), else put it
        back in the queue; a no-op once settled. For tasks taken with
        :meth:`TaskQueue.take_task`; ``processing()`` and ``next_task()`` settle their own.
        """
        self._queue.release_pulled(self)
        if self._delivery.settled:
            return
        if self._outcome is not None and self._outcome.done():
            await self._queue.finish_task(self._delivery, self._outcome.envelope())
        else:
            await self.requeue()


class TaskIterator:
    """The tasks of a queue now, one at a time, each settled when the next is asked for."""

    def __init__(self, queue: PullSource) -> None:
        self._queue = queue
        self._current: IncomingTask | None = None

    def __aiter__(self) -> TaskIterator:
        return self

    async def __anext__(self) -> IncomingTask:
        if self._current is not None:
            with trio.CancelScope(shield=True):
                await self._current.settle()
            self._current = None
        try:
            self._current = await self._queue.take_task(None)
        except (QueueEmpty, CommunicatorClosed):
            raise StopAsyncIteration from None
        return self._current
