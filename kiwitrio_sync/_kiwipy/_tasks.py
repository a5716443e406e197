"""kiwiPy's task queues and pull mode: :class:`RmqThreadTaskQueue`, :class:`RmqThreadIncomingTask`
(a task reserved while its ``process()`` future lives, put back when it is dropped)."""

from __future__ import annotations

import concurrent.futures
import functools
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import trio
import trio.testing

from kiwitrio import CommunicatorClosed, QueueEmpty
from kiwitrio import IncomingTask as CoreIncomingTask
from kiwitrio import TaskQueue as CoreTaskQueue

from .._outcomes import fetch_within, outcome_of_block
from ._api import InvalidStateError, OperationTimeout
from ._futures import _send_nested

if TYPE_CHECKING:
    from ._communicator import RmqThreadCommunicator

__all__ = [
    "TASK_FETCH_TIMEOUT",
    "TASK_FINISHED",
    "TASK_PENDING",
    "TASK_PROCESSING",
    "TASK_REQUEUED",
    "RmqThreadIncomingTask",
    "RmqThreadTaskQueue",
]

#: kiwiPy's ``next_task`` timeout.
TASK_FETCH_TIMEOUT = 5.0

# The states of a task taken in pull mode, as kiwiPy names them.
TASK_PENDING = "pending"
TASK_PROCESSING = "processing"
TASK_FINISHED = "finished"
TASK_REQUEUED = "requeued"


class RmqThreadTaskQueue:
    """A named task queue with kiwiPy's pull mode (``kiwipy.rmq.RmqThreadTaskQueue``)."""

    def __init__(self, communicator: RmqThreadCommunicator, core: CoreTaskQueue) -> None:
        self._communicator = communicator
        self._queue = core
        self._lock = threading.Lock()
        #: Finishing and requeuing started by future callbacks: waited for before the next
        #: fetch, so that a task given back is there to be taken again.
        self._settling: list[concurrent.futures.Future[None]] = []
        #: Tasks being processed: kept alive here until settled, so that dropping an
        #: unresolved outcome future always gives its task back.
        self._reserved: set[RmqThreadIncomingTask] = set()

    @property
    def name(self) -> str:
        return self._queue.name

    def task_send(self, task: Any, no_reply: bool = False,
                  ) -> concurrent.futures.Future[Any] | None:
        """Send a task; a future of its outcome (nested, as kiwiPy's), ``None`` if
        ``no_reply``."""
        comm = self._communicator
        if no_reply:
            comm._call(self._queue.task_send, task, True)
            return None
        future: concurrent.futures.Future[Any] = comm._call(
            _send_nested, self._queue.task_send, task, False)
        return future

    def add_task_subscriber(self, subscriber: Any, identifier: Any = None) -> Any:
        comm = self._communicator
        comm._core  # noqa: B018 - closed first, whatever the subscriber
        return comm._call(
            functools.partial(self._queue.add_task_subscriber, pending_replies=True),
            comm._wrap_kiwipy(subscriber, kind="task"), identifier)

    def remove_task_subscriber(self, identifier: Any) -> None:
        self._communicator._call(self._queue.remove_task_subscriber, identifier)

    @contextmanager
    def next_task(self, timeout: float | None = TASK_FETCH_TIMEOUT,
                  fail: bool = True) -> Iterator[RmqThreadIncomingTask | None]:
        """Take the task at the head of the queue, as kiwiPy does.

        An empty queue raises ``QueueEmpty`` at once (``None`` with ``fail=False``);
        ``timeout`` bounds the exchange with the broker (``kiwipy.TimeoutError``). On leaving
        the block, a task nobody started processing goes back to the queue; one whose
        ``process()`` future is alive stays reserved until that future is resolved (the
        task is then finished) or dropped (it goes back).
        """
        task = self._take(timeout)
        if task is None:
            if fail:
                raise QueueEmpty(f"no task in {self.name!r}")
            yield None
            return
        try:
            yield task
        finally:
            _give_back_if_pending(task)

    def __iter__(self) -> Iterator[RmqThreadIncomingTask]:
        """The tasks in the queue now, each once: those not processed stay reserved until
        the iteration ends, and then go back to the queue (kiwiPy's iteration)."""
        taken: list[RmqThreadIncomingTask] = []
        try:
            while True:
                task = self._take(TASK_FETCH_TIMEOUT)
                if task is None:
                    return
                taken.append(task)
                yield task
        finally:
            for task in taken:
                _give_back_if_pending(task)

    def _take(self, timeout: float | None) -> RmqThreadIncomingTask | None:
        self._wait_settling()
        try:
            core_task = self._communicator._call(fetch_within, self._queue, timeout,
                                                 timeout=None)
        except trio.TooSlowError:
            raise OperationTimeout(f"fetching a task from {self.name!r} took longer than "
                                   f"{timeout} s") from None
        except QueueEmpty:
            return None
        return RmqThreadIncomingTask(self, core_task)

    def _reserve(self, task: RmqThreadIncomingTask) -> None:
        with self._lock:
            self._reserved.add(task)

    def _release(self, task: RmqThreadIncomingTask) -> None:
        with self._lock:
            self._reserved.discard(task)

    def _start_settling(self, task: RmqThreadIncomingTask, fn: Callable[..., Any],
                        *args: Any) -> None:
        """Run ``fn(*args)`` in the portal without waiting (from any thread)."""
        self._release(task)
        try:
            future = self._communicator._runtime.portal.submit(fn, *args)
        except CommunicatorClosed:
            return  # closing gives every reserved task back anyway
        with self._lock:
            self._settling = [f for f in self._settling if not f.done()]
            self._settling.append(future)

    def _wait_settling(self) -> None:
        with self._lock:
            settling, self._settling = self._settling, []
        if settling:
            concurrent.futures.wait(settling, timeout=self._communicator._timeout)


def _give_back_if_pending(task: RmqThreadIncomingTask) -> None:
    if task.state == TASK_PENDING:
        try:
            task.requeue()
        except CommunicatorClosed:
            pass  # closing gave it back


async def _finish(core: CoreIncomingTask, value: Any, error: BaseException | None) -> None:
    if core.settled:
        return
    outcome = core.process()
    if not outcome.done():
        if error is not None:
            outcome.set_exception(error)
        else:
            outcome.set_result(value)
    await core.settle()


async def _give_back(core: CoreIncomingTask) -> None:
    # The core's outcome is set only by _finish: settling without one requeues.
    await core.settle()


class RmqThreadIncomingTask:
    """A task taken in pull mode, with kiwiPy's states (``kiwipy.rmq.RmqThreadIncomingTask``).

    ``state`` is ``"pending"`` (taken), ``"processing"`` (``process()`` was called),
    ``"finished"`` or ``"requeued"``.
    """

    def __init__(self, queue: RmqThreadTaskQueue, core: CoreIncomingTask) -> None:
        self._queue = queue
        self._task = core
        self._state = TASK_PENDING
        self._lock = threading.Lock()
        self._outcome_ref: weakref.ref[concurrent.futures.Future[Any]] | None = None

    @property
    def body(self) -> Any:
        return self._task.body

    @property
    def no_reply(self) -> bool:
        """True if the sender wants no result."""
        return not self._task._delivery.reply_to

    @property
    def redelivered(self) -> bool:
        return self._task.redelivered

    @property
    def state(self) -> str:
        return self._state

    def process(self) -> concurrent.futures.Future[Any]:
        """Start processing: resolve the returned future (now or later) to finish the task.

        While the future lives the task stays reserved for this worker; dropping it
        unresolved puts the task back in the queue, and so does cancelling it.
        """
        self._begin()
        outcome: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._outcome_ref = weakref.ref(outcome, self._outcome_dropped)
        outcome.add_done_callback(self._outcome_done)
        return outcome

    @contextmanager
    def processing(self) -> Iterator[concurrent.futures.Future[Any]]:
        """Process in a block: resolve the future in it; an exception escaping the block
        becomes the outcome (and goes on up). Unresolved at the end: the task goes back."""
        self._begin()
        outcome: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            with outcome_of_block(outcome):
                yield outcome
        finally:
            if outcome.done() and not outcome.cancelled():
                with self._lock:
                    self._state = TASK_FINISHED
                error = outcome.exception()
                value = outcome.result() if error is None else None
                try:
                    self._queue._communicator._call(_finish, self._task, value, error)
                finally:
                    self._queue._release(self)
            else:
                self._requeue_now()

    def requeue(self) -> None:
        """Put the task back in the queue; blocks until it is back."""
        with self._lock:
            if self._state not in (TASK_PENDING, TASK_PROCESSING):
                raise InvalidStateError(f"the task is {self._state}")
        self._requeue_now()

    # -- internals ----------------------------------------------------------------------------

    def _begin(self) -> None:
        with self._lock:
            if self._state != TASK_PENDING:
                raise InvalidStateError(f"the task is {self._state}")
            self._state = TASK_PROCESSING
        self._queue._reserve(self)

    def _requeue_now(self) -> None:
        with self._lock:
            self._state = TASK_REQUEUED
            self._outcome_ref = None
        try:
            self._queue._communicator._call(_give_back, self._task)
        finally:
            self._queue._release(self)

    def _outcome_done(self, outcome: concurrent.futures.Future[Any]) -> None:
        # In whichever thread resolved the future (the portal thread included): no waiting.
        with self._lock:
            if self._state != TASK_PROCESSING:
                return
            self._outcome_ref = None
            if outcome.cancelled():
                self._state = TASK_REQUEUED
                finish: tuple[Any, ...] | None = None
            else:
                self._state = TASK_FINISHED
                error = outcome.exception()
                finish = (outcome.result() if error is None else None, error)
        if finish is None:
            self._queue._start_settling(self, _give_back, self._task)
        else:
            self._queue._start_settling(self, _finish, self._task, *finish)

    def _outcome_dropped(self, ref: weakref.ref[concurrent.futures.Future[Any]]) -> None:
        # The future was garbage collected unresolved: nobody will finish the task.
        with self._lock:
            if self._outcome_ref is not ref or self._state != TASK_PROCESSING:
                return
            self._outcome_ref = None
            self._state = TASK_REQUEUED
        self._queue._start_settling(self, _give_back, self._task)


