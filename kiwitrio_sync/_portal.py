"""A thread running a Trio event loop, and blocking calls into it from other threads.

The :class:`Portal` starts one daemon thread that runs ``trio.run``. Other threads submit
Trio-flavoured calls; each runs as a task in the portal's nursery and its outcome comes back
through a :class:`concurrent.futures.Future`. A blocking :meth:`Portal.call` that is
interrupted (``KeyboardInterrupt`` in the caller) cancels its task, so nothing keeps running
on behalf of a caller that has gone.

The portal thread must never block on itself: :meth:`Portal.call` from inside the portal
thread raises :class:`BlockingCallInPortal` instead of deadlocking.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import trio

from kiwitrio import CommunicatorClosed, KiwitrioError, _tracing
from kiwitrio.lowlevel import block_process_signals

__all__ = ["BlockingCallInPortal", "Portal"]

T = TypeVar("T")

_JOIN_TIMEOUT = 10.0


class BlockingCallInPortal(KiwitrioError, RuntimeError):
    """A blocking kiwitrio_sync call was made from the portal thread itself.

    That would wait for the thread that is waiting: a deadlock. Callbacks added to the
    futures kiwitrio_sync returns run in the portal thread; hand blocking work to another
    thread from there.
    """


class Portal:
    """A Trio event loop in a daemon thread, shared by any number of communicators.

    Use as a context manager, or call :meth:`stop` when done. Stopping cancels whatever
    still runs in it. A portal belongs to the process that started it: after ``fork()``,
    the child cannot use it (the thread does not exist there).
    """

    def __init__(self, name: str = "kiwitrio-portal") -> None:
        self._pid = os.getpid()
        self._started = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._stop_requested: trio.Event | None = None
        self._stopped = False
        self._startup_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._started.wait()
        if self._startup_error is not None:
            raise self._startup_error

    # -- the portal thread -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            # Ctrl-C must interrupt the blocking call in the main thread, not land here (the
            # portal's worker threads and the bridge's asyncio thread inherit this mask).
            block_process_signals()
            trio.run(self._main)
        except BaseException as exc:
            self._startup_error = exc
        finally:
            self._stopped = True
            self._started.set()

    async def _main(self) -> None:
        self._stop_requested = trio.Event()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._token = trio.lowlevel.current_trio_token()
            self._started.set()
            await self._stop_requested.wait()
            nursery.cancel_scope.cancel()

    # -- any thread --------------------------------------------------------------------------

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def in_portal_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def is_running(self) -> bool:
        return not self._stopped and os.getpid() == self._pid

    def check_usable(self) -> None:
        if os.getpid() != self._pid:
            raise CommunicatorClosed(
                "this communicator belongs to the parent process; a forked child must "
                "connect its own"
            )
        if self._stopped:
            raise CommunicatorClosed("the portal thread has stopped")

    def submit(self, fn: Callable[..., Awaitable[T]], *args: Any) -> concurrent.futures.Future[T]:
        """Run ``await fn(*args)`` in the portal; returns a future of its outcome at once.

        Cancelling the future cancels the Trio task.
        """
        self.check_usable()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        assert self._token is not None
        # The caller's trace context (if tracing is on): what the call sends is its child.
        carried = _tracing.carried()
        try:
            self._token.run_sync_soon(self._spawn, future, fn, args, carried)
        except trio.RunFinishedError:
            raise CommunicatorClosed("the portal thread has stopped") from None
        return future

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await fn(*args)`` in the portal and block until it is done.

        Raises what it raised. If the wait is interrupted (e.g. ``KeyboardInterrupt``), the
        task in the portal is cancelled before the exception propagates.
        """
        if self.in_portal_thread():
            raise BlockingCallInPortal(
                "blocking kiwitrio_sync call from the portal thread (a future's callback?): "
                "it would deadlock; run it in another thread"
            )
        future = self.submit(fn, *args)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def stop(self) -> None:
        """Cancel everything in the portal, stop its loop and join the thread. Idempotent."""
        if os.getpid() != self._pid or not self._thread.is_alive():
            self._stopped = True
            return
        if self._token is not None and self._stop_requested is not None:
            try:
                self._token.run_sync_soon(self._stop_requested.set)
            except trio.RunFinishedError:
                pass
        if not self.in_portal_thread():
            self._thread.join(_JOIN_TIMEOUT)

    def __enter__(self) -> Portal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- in the portal thread ----------------------------------------------------------------

    def _spawn(self, future: concurrent.futures.Future[T], fn: Callable[..., Awaitable[T]],
               args: tuple[Any, ...], carried: AbstractContextManager[None]) -> None:
        if future.cancelled():
            return
        assert self._nursery is not None
        self._nursery.start_soon(self._run_call, future, fn, args, carried)

    @staticmethod
    async def _run_call(future: concurrent.futures.Future[T],
                        fn: Callable[..., Awaitable[T]], args: tuple[Any, ...],
                        carried: AbstractContextManager[None]) -> None:
        with trio.CancelScope() as scope:
            token = trio.lowlevel.current_trio_token()

            def cancel_if_cancelled(done: concurrent.futures.Future[T]) -> None:
                if done.cancelled():
                    try:
                        token.run_sync_soon(scope.cancel)
                    except trio.RunFinishedError:
                        pass

            future.add_done_callback(cancel_if_cancelled)
            try:
                with carried:
                    result = await fn(*args)
            except trio.Cancelled:
                future.cancel()
                raise
            except BaseException as exc:
                settle_future(future, None, exc)
            else:
                settle_future(future, result, None)


def settle_future(future: concurrent.futures.Future[T], result: T | None,
                  error: BaseException | None) -> None:
    """Resolve ``future`` with ``error`` or ``result``, unless its caller cancelled it."""
    if future.cancelled():
        return
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]
    except concurrent.futures.InvalidStateError:
        pass  # cancelled by the caller meanwhile
