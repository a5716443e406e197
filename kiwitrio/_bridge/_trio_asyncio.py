"""The same-thread bridge: trio-asyncio runs an asyncio loop inside the Trio run.

asyncio callbacks execute inside a Trio task of the same thread, so crossings cost no thread
switch: :meth:`TrioAsyncioBridge.call_in_trio` is a plain call. The price is process-wide:
importing trio_asyncio replaces the event-loop policy and ``asyncio.get_event_loop``,
``new_event_loop``, ``set_event_loop``, ``get_running_loop`` for every thread, which breaks
asyncio programs that run a loop of their own beside kiwitrio, and trio-asyncio 0.16 does not
import on Python 3.14 or later. This module is therefore imported only when this bridge is
asked for (:func:`kiwitrio._bridge.open_bridge`), never by ``import kiwitrio``.

Speed: trio-asyncio's stock main loop takes one asyncio handle per Trio checkpoint, entering a
cancel scope and awaiting a memory channel for each. Under message load that is most of the
CPU time. :func:`open_trio_asyncio_bridge` swaps in a main loop step that, after the first
handle, runs every handle that is already ready (up to :data:`BATCH_LIMIT`) before yielding
to Trio. It keeps the stock loop's order and semantics (timers, Trio-task handles, cancelled
handles, sniffio), and is only installed on the trio-asyncio version it was tested with. With
it goes a ``call_soon`` that, like asyncio's own loops, checks its callback only in debug
mode: the stock one inspects every callback (``iscoroutinefunction``), about a tenth of the
loop's time.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import os
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio
import trio_asyncio
from sniffio import thread_local as sniffio_library
from trio_asyncio._handles import AsyncHandle

from .._groups import BaseExceptionGroup, single_leaf
from ._base import (
    AsyncioBridge,
    AsyncioOperationAborted,
    abort_open_transports,
    call_in_asyncio,
    describe,
    log_asyncio_error,
    track_socket_transports,
)

__all__ = ["BATCH_LIMIT", "STOCK_LOOP_ENV", "TrioAsyncioBridge", "open_trio_asyncio_bridge"]

logger = logging.getLogger("kiwitrio.bridge")

T = TypeVar("T")

#: Most asyncio handles run in one go before the main loop yields to other Trio tasks.
#: Bounds how long Trio tasks can be starved by a flood of asyncio callbacks.
BATCH_LIMIT = 256

# The batched step reaches into trio-asyncio's private loop state, so it is pinned to the
# versions it was read against and tested with (tests/test_bridge.py).
_BATCHED_LOOP_VERSIONS = frozenset({"0.16.0"})

#: Set to "1" to run trio-asyncio's stock main loop (for comparison and debugging).
STOCK_LOOP_ENV = "KIWITRIO_STOCK_ASYNCIO_LOOP"


class TrioAsyncioBridge(AsyncioBridge):
    """Runs asyncio-flavoured code from Trio on one trio-asyncio loop, in the Trio thread."""

    name = "trio-asyncio"

    def __init__(self, loop: asyncio.AbstractEventLoop, batched: bool) -> None:
        self.loop = loop
        #: Whether the batched main loop step is in use.
        self.batched = batched

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        coroutine = call_in_asyncio(fn, args)
        try:
            result: T = await self.loop.run_aio_coroutine(coroutine)  # type: ignore[attr-defined]
        except asyncio.CancelledError as exc:
            # Trio's own cancellation arrives as trio.Cancelled, never as this.
            raise AsyncioOperationAborted(
                f"{describe(fn)} was cancelled by asyncio "
                "(its connection or channel closed)") from exc
        return result

    def start_in_asyncio(self, fn: Callable[..., Coroutine[Any, Any, object]],
                         *args: Any) -> None:
        # Same thread: the task can be created right away, from Trio or asyncio code.
        if not self.loop.is_closed():
            self.loop.create_task(fn(*args))

    def call_soon_in_asyncio(self, fn: Callable[..., object], *args: Any) -> None:
        # call_soon's queue is the one create_task schedules a task's first step on: the
        # order with start_in_asyncio holds.
        if not self.loop.is_closed():
            self.loop.call_soon(_log_errors, fn, args)

    def call_in_trio(self, fn: Callable[..., object], *args: Any) -> None:
        # Same thread: asyncio callbacks may call synchronous Trio APIs directly.
        try:
            fn(*args)
        except Exception:
            logger.exception("error in a call across the asyncio bridge: %s", describe(fn))


@asynccontextmanager
async def open_trio_asyncio_bridge() -> AsyncIterator[TrioAsyncioBridge]:
    """Open a trio-asyncio loop (batched when supported) for the duration of the block."""
    body_error: BaseException | None = None
    try:
        async with trio_asyncio.open_loop() as loop:
            loop.set_exception_handler(log_asyncio_error)
            batched = _install_batched_main_loop(loop)
            transports = track_socket_transports(loop)
            try:
                yield TrioAsyncioBridge(loop, batched)
            except BaseException as exc:
                body_error = exc
                raise
            finally:
                abort_open_transports(transports)
    except BaseExceptionGroup as group:
        # open_loop() runs the body inside nurseries of its own, which wrap whatever the
        # body raised in exception groups. Give the caller back the exception it raised.
        if body_error is not None and single_leaf(group) is body_error:
            raise body_error from None
        raise


def _install_batched_main_loop(loop: Any) -> bool:
    if os.environ.get(STOCK_LOOP_ENV) == "1":
        return False
    version = getattr(trio_asyncio, "__version__", "")
    if version not in _BATCHED_LOOP_VERSIONS:
        logger.info("trio-asyncio %s is untested with the batched main loop; using stock", version)
        return False
    # _main_loop() looks the step up on the instance on every iteration, so an instance
    # attribute takes over from the next step on, for this loop only.
    loop._main_loop_one = types.MethodType(_batched_main_loop_one, loop)
    loop.call_soon = types.MethodType(_call_soon, loop)
    return True


def _call_soon(loop: Any, callback: Callable[..., object], *args: Any,
               **context: Any) -> asyncio.Handle:
    # trio-asyncio's call_soon minus the callback check outside debug mode, where asyncio's
    # own loops skip it too (BaseEventLoop.call_soon).
    if loop._debug:
        loop._check_callback(callback, "call_soon")
    handle: asyncio.Handle = loop._queue_handle(asyncio.Handle(callback, args, loop, **context))
    return handle


_stock_main_loop_one = trio_asyncio.TrioEventLoop._main_loop_one


async def _batched_main_loop_one(loop: Any, no_wait: bool = False) -> None:
    # The stock step blocks until there is work (or a timer is due) and runs one handle.
    await _stock_main_loop_one(loop, no_wait)
    if no_wait:
        return
    # Then run what is ready now, without a checkpoint per handle. A due timer goes first,
    # as in the stock loop, which checks timers before the queue.
    timers = loop._timers
    receive_nowait = loop._q_recv.receive_nowait
    for _ in range(BATCH_LIMIT):
        if timers and timers[0]._when <= loop.time():
            handle = heapq.heappop(timers)
        else:
            try:
                handle = receive_nowait()
            except trio.WouldBlock:
                return
            if isinstance(handle, asyncio.TimerHandle):
                heapq.heappush(timers, handle)
                continue
        # Mirrors the dispatch at the end of the stock _main_loop_one; plain handles run
        # right here (no coroutine per handle), only Trio-task handles need an await.
        if isinstance(handle, AsyncHandle):
            await _start_async_handle(loop, handle)
        elif not handle._cancelled:
            previous, sniffio_library.name = sniffio_library.name, "asyncio"
            try:
                handle._run()
            finally:
                sniffio_library.name = previous


async def _start_async_handle(loop: Any, handle: Any) -> None:
    handle._context.run(loop._nursery.start_soon, handle._run, name=handle._callback)
    await handle._started.wait()


def _log_errors(fn: Callable[..., object], args: tuple[Any, ...]) -> None:
    try:
        fn(*args)
    except Exception:
        logger.exception("error in a call across the asyncio bridge: %s", describe(fn))
