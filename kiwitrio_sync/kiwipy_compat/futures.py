"""``kiwipy.futures``: the futures are :class:`concurrent.futures.Future`, with kiwiPy's helpers."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = [
    "CancelledError",
    "Future",
    "as_completed",
    "capture_exceptions",
    "chain",
    "copy_future",
    "wait",
]

Future = concurrent.futures.Future
CancelledError = concurrent.futures.CancelledError
wait = concurrent.futures.wait
as_completed = concurrent.futures.as_completed


def copy_future(source: Future[Any], target: Future[Any]) -> None:
    """Give ``target`` the outcome of ``source`` (which is done), unless ``target`` is done.

    A cancelled ``source`` cancels ``target``; an exception is copied as the exception.
    """
    if target.done():
        return
    if source.cancelled():
        target.cancel()
        return
    with capture_exceptions(target):
        target.set_result(source.result())


def chain(source: Future[Any], target: Future[Any]) -> None:
    """When ``source`` is done, copy its outcome to ``target`` (see :func:`copy_future`)."""
    source.add_done_callback(lambda done: copy_future(done, target))


@contextmanager
def capture_exceptions(future: Future[Any],
                       ignore: type[BaseException] | tuple[type[BaseException], ...] = (),
                       ) -> Iterator[None]:
    """An :class:`Exception` raised in the block becomes ``future``'s exception instead of
    going on up; those of the ``ignore`` types go on up."""
    try:
        yield
    except Exception as exc:
        if isinstance(exc, ignore):
            raise
        future.set_exception(exc)
