"""Closing kiwiPy's way: subscriber calls in progress (waited for, briefly), the connection
watched for loss, and the close callbacks kiwiPy offers."""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio
import trio.testing

import kiwitrio
from kiwitrio.lowlevel import nursery_of, session_of

from ._api import ConnectionLost

if TYPE_CHECKING:
    from ._communicator import RmqThreadCommunicator

__all__ = [
    "CLOSE_LINGER",
    "_CloseCallbacks",
    "_InFlight",
    "_connection_state_changed",
    "_describe",
    "_ended",
    "_linger",
    "_subscriber_thread",
    "_watch_connection",
]

logger = logging.getLogger("kiwitrio.sync")  # a public name (docs/configuration.md#logging)

#: How long close() waits at most for subscriber calls in progress.
CLOSE_LINGER = 2.0


#: Set in a worker thread while it runs one of our subscribers.
_subscriber_thread = threading.local()


class _InFlight:
    """Subscriber calls in progress, counted in the portal."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = trio.Event()
        self._idle.set()

    def __enter__(self) -> None:
        self.count += 1
        if self._idle.is_set():
            self._idle = trio.Event()

    def __exit__(self, *exc_info: object) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()


async def _linger(core: kiwitrio.Communicator | None, in_flight: _InFlight) -> None:
    """Before closing: let the messages that reached us be handled, for a short while."""
    if core is None or core.is_closed():
        return
    with trio.move_on_after(CLOSE_LINGER):
        try:
            # A round trip through the bridge and the broker: deliveries the broker sent
            # before answering are with us when it returns.
            await session_of(core).inspect_queue(core.default_queue.name)
        except Exception:
            return
        # Every task has gone as far as it can: a delivery that came is now a counted call.
        await trio.testing.wait_all_tasks_blocked()
        await in_flight.wait_idle()


def _describe(fn: Callable[..., Any]) -> str:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def _connection_state_changed(
    this: weakref.ref[RmqThreadCommunicator],
    user_callback: Callable[[kiwitrio.ConnectionState], None] | None,
    state: kiwitrio.ConnectionState,
) -> None:
    # In the portal thread (the core's on_connection_state).
    if user_callback is not None:
        user_callback(state)
    communicator = this()
    if communicator is None:
        return
    if state is kiwitrio.ConnectionState.RECONNECTING:
        communicator._close_callbacks.fire(
            communicator, ConnectionLost("the connection to the broker was lost; reconnecting"))
    elif state in (kiwitrio.ConnectionState.CONNECTED, kiwitrio.ConnectionState.BLOCKED):
        communicator._close_callbacks.reported_loss = False


async def _watch_connection(core: kiwitrio.Communicator,
                            this: weakref.ref[RmqThreadCommunicator]) -> None:
    async def watch() -> None:
        reason = await session_of(core).wait_lost()
        communicator = this()
        if communicator is not None and not communicator._close_callbacks.reported_loss:
            communicator._close_callbacks.fire(communicator, ConnectionLost(
                f"the connection to the broker was lost: {reason}"))

    # In the communicator's nursery: it ends when the communicator closes.
    nursery_of(core).start_soon(watch)


def _ended(this: weakref.ref[RmqThreadCommunicator], finished: concurrent.futures.Future[None],
           ) -> None:
    # In the portal thread, when the core's block has ended.
    communicator = this()
    if communicator is None or communicator._runtime.closed or finished.cancelled():
        return
    error = finished.exception()
    if error is not None and not communicator._close_callbacks.reported_loss:
        communicator._close_callbacks.fire(communicator, ConnectionLost(
            f"the connection to the broker was lost for good: {error}"))


class _CloseCallbacks:
    """Callbacks held strongly or weakly, called once each per closing, in order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[tuple[Any, Callable[[], Any]]] = []
        #: The loss of the current connection was reported already (not twice for one).
        self.reported_loss = False

    def add(self, callback: Callable[..., Any], weak: bool) -> None:
        if weak:
            ref: Callable[[], Any] = (weakref.WeakMethod(callback)
                                      if hasattr(callback, "__self__")
                                      else weakref.ref(callback))
        else:
            ref = functools.partial(lambda cb: cb, callback)
        with self._lock:
            self._entries.append((_key(callback), ref))

    def remove(self, callback: Callable[..., Any]) -> None:
        key = _key(callback)
        with self._lock:
            for index, (entry_key, _) in enumerate(self._entries):
                if entry_key == key:
                    del self._entries[index]
                    return
        raise ValueError(f"{callback!r} is not a close callback")

    def fire(self, communicator: Any, exc: BaseException | None) -> None:
        with self._lock:
            self.reported_loss = True
            callbacks = [ref() for _, ref in self._entries]
        for callback in callbacks:
            if callback is None:
                continue
            try:
                callback(communicator, exc)
            except Exception:
                logger.exception("close callback %r raised", callback)


def _key(callback: Callable[..., Any]) -> Any:
    # Bound methods are made anew at each attribute access: compare by object and function.
    owner = getattr(callback, "__self__", None)
    if owner is not None and hasattr(callback, "__func__"):
        return ("method", id(owner), callback.__func__)
    return ("callable", id(callback))



