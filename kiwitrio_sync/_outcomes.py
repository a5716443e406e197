"""What both blocking faces share to hand outcomes to threads: result handles kept alive until
they resolve, a task pulled within a timeout, and a processing block whose exception becomes
the task's outcome."""

from __future__ import annotations

import concurrent.futures
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import trio

from kiwitrio import IncomingTask, ResultHandle, TaskQueue

__all__ = ["fetch_within", "keep_until_resolved", "outcome_of_block"]

#: Handles of futures not resolved yet. The reply router holds handles weakly (an async
#: caller that drops a handle drops its result); a blocking caller may drop the future and
#: still expect its done-callbacks to run, as in kiwiPy, so they are kept until resolved.
_unresolved: set[ResultHandle] = set()


def keep_until_resolved(handle: ResultHandle) -> None:
    """Keep ``handle`` (and so the future fed from it) alive until its final reply."""
    _unresolved.add(handle)
    handle.add_done_callback(_unresolved.discard)


async def fetch_within(queue: TaskQueue, seconds: float | None) -> IncomingTask:
    """The task at the head of ``queue`` (:class:`~kiwitrio.QueueEmpty` at once if there is
    none); the exchange with the broker takes at most ``seconds`` (``None``: no bound), else
    :class:`trio.TooSlowError`."""
    with trio.fail_after(seconds if seconds is not None else math.inf):
        return await queue.take_task(None)


@contextmanager
def outcome_of_block(future: concurrent.futures.Future[Any]
                     ) -> Iterator[concurrent.futures.Future[Any]]:
    """Yields ``future``; an exception escaping the block becomes its outcome (unless it has
    one already) and goes on up."""
    try:
        yield future
    except Exception as exc:
        if not future.done():
            future.set_exception(exc)
        raise
