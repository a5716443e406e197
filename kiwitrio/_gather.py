"""Many results at once: :func:`as_completed` yields result handles in completion order."""

from __future__ import annotations

import collections
from collections.abc import Iterable

import trio

from ._kinds._replies import ResultHandle

__all__ = ["ResultsAsCompleted", "as_completed"]


class ResultsAsCompleted:
    """The handles given to :func:`as_completed`, each yielded once it is done.

    The handles' done callbacks (run in the Trio thread) append them to a queue that the
    iteration takes from: no task waits on each handle, so nothing needs a nursery, and the
    queue never holds more than the handles given.
    """

    def __init__(self, handles: Iterable[ResultHandle]) -> None:
        self._ready: collections.deque[ResultHandle] = collections.deque()
        # Strong references until done: the reply router only keeps weak ones, so a handle
        # that nobody else holds (handles given as a generator) would otherwise be dropped,
        # and never complete.
        self._waiting: set[ResultHandle] = set()
        self._remaining = 0
        self._arrived = trio.lowlevel.ParkingLot()
        seen: set[int] = set()
        for handle in handles:
            if id(handle) in seen:  # each handle is yielded once, however often it is given
                continue
            seen.add(id(handle))
            self._remaining += 1
            self._waiting.add(handle)
            handle.add_done_callback(self._on_done)  # at once if done: those come first

    @property
    def remaining(self) -> int:
        """How many handles are still to be yielded (done or not)."""
        return self._remaining

    def _on_done(self, handle: ResultHandle) -> None:
        self._waiting.discard(handle)
        self._ready.append(handle)
        self._arrived.unpark_all()

    def __aiter__(self) -> ResultsAsCompleted:
        return self

    async def __anext__(self) -> ResultHandle:
        await trio.lowlevel.checkpoint_if_cancelled()
        waited = False
        while not self._ready:
            if self._remaining == 0:
                raise StopAsyncIteration
            # Cancelled here, nothing is lost: a handle that completes meanwhile waits in
            # the queue for the next iteration.
            await self._arrived.park()
            waited = True
        if not waited:
            await trio.lowlevel.cancel_shielded_checkpoint()
        handle = self._ready.popleft()
        self._remaining -= 1
        if self._remaining == 0:
            self._arrived.unpark_all()  # another task iterating too: it ends now as well
        return handle


def as_completed(handles: Iterable[ResultHandle]) -> ResultsAsCompleted:
    """Yield each of ``handles`` once it is done, in the order they complete.

    ::

        handles = [await comm.task_send(n) for n in range(10)]
        async for handle in kiwitrio.as_completed(handles):
            try:
                print(handle.result())
            except kiwitrio.RemoteException as exc:
                print("failed:", exc)

    Handles already done come first, in the order given; a handle given twice is yielded
    once. The iteration ends when every handle was yielded. Each handle is yielded as it is,
    done: read its outcome with :meth:`ResultHandle.result` (which raises
    :class:`~kiwitrio.RemoteException` for a task or call that raised, or
    :class:`~kiwitrio.CommunicatorClosed` if the communicator closed first) or
    :meth:`ResultHandle.exception`. A failure does not end the iteration.

    No background task is started: the handles' done callbacks feed the iteration, so it
    needs no nursery and leaves nothing behind if abandoned. It keeps a reference to each
    handle until it is done (so handles may be given as a generator).

    Cancellation: cancelling the ``async for`` (a cancel scope around it, ``break``) only
    stops waiting. The tasks and calls go on and the handles keep their results; iterating
    the same object again goes on with the handles not yielded yet. There is no timeout
    argument: put the loop in ``trio.move_on_after`` or ``trio.fail_after``.
    """
    return ResultsAsCompleted(handles)
