"""Futures as kiwiPy hands them out: nested futures for "pending" replies, and a future that
relays another's outcome (a subscriber that returned a future)."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Any

from kiwitrio import ResultHandle, TaskRejected

from .._outcomes import keep_until_resolved
from .._portal import settle_future

__all__ = ["_cancel", "_nested_future_from", "_reject_task", "_relay", "_send_nested"]


def _reject_task(target: concurrent.futures.Future[Any]) -> None:
    target.set_exception(TaskRejected("the subscriber's future was cancelled"))


def _cancel(target: concurrent.futures.Future[Any]) -> None:
    target.cancel()


def _relay(source: concurrent.futures.Future[Any],
           on_cancel: Callable[[concurrent.futures.Future[Any]], None],
           ) -> concurrent.futures.Future[Any]:
    """A future with ``source``'s outcome; a future among the results is relayed too."""
    target: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def copy(done: concurrent.futures.Future[Any]) -> None:
        try:
            if done.cancelled():
                on_cancel(target)
                return
            error = done.exception()
            if error is not None:
                target.set_exception(error)
                return
            result = done.result()
            if isinstance(result, concurrent.futures.Future):
                result = _relay(result, on_cancel)
            target.set_result(result)
        except concurrent.futures.InvalidStateError:
            pass  # the core gave up waiting (it is closing)

    source.add_done_callback(copy)
    return target


async def _send_nested(send: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
    # In the portal thread: the handle is only touched there.
    handle: ResultHandle = await send(*args)
    return _nested_future_from(handle)


def _nested_future_from(handle: ResultHandle) -> concurrent.futures.Future[Any]:
    """kiwiPy's result shape: each "pending" reply resolves the innermost future so far to
    a new future; the final reply resolves the innermost one."""
    outer: concurrent.futures.Future[Any] = concurrent.futures.Future()
    innermost = [outer]
    keep_until_resolved(handle)

    def pending(_: ResultHandle) -> None:
        current = innermost[0]
        nested: concurrent.futures.Future[Any] = concurrent.futures.Future()
        innermost[0] = nested
        settle_future(current, nested, None)

    def transfer(done: ResultHandle) -> None:
        error = done.exception()
        settle_future(innermost[0], None if error is not None else done.result(), error)

    for _ in range(handle.pending_replies):  # those that came before the send returned
        pending(handle)
    handle.add_pending_callback(pending)
    handle.add_done_callback(transfer)
    return outer


