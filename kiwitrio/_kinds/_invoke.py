"""Running user subscribers, whatever their flavour.

A subscriber may be an async function (awaited in the calling Trio task), or a plain function
(run in a worker thread with :func:`trio.to_thread.run_sync`, so that it can block without
stalling deliveries, heartbeats or other subscribers). Either may return an awaitable or a
:class:`concurrent.futures.Future`; the outcome is what that resolves to. ``on_pending``, if
given, is awaited each time the outcome turns out to be such a future or awaitable, before
waiting for it (RPC and task subscribers use it to send "pending" replies).
"""

from __future__ import annotations

import concurrent.futures
import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import trio

__all__ = [
    "SubscriberKind",
    "call_subscriber",
    "check_subscriber_signature",
    "is_async_callable",
    "wait_concurrent_future",
]

SubscriberKind = Literal["task", "RPC", "broadcast"]

#: How each kind of subscriber is called (positionally), as said in error messages.
_PARAMETERS: dict[SubscriberKind, tuple[str, ...]] = {
    "task": ("communicator", "task"),
    "RPC": ("communicator", "msg"),
    "broadcast": ("communicator", "body", "sender", "subject", "correlation_id"),
}


def is_async_callable(fn: Callable[..., Any]) -> bool:
    """True for async functions, partials of them and objects with an async ``__call__``."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - we want the method, not callable()
    return call is not None and inspect.iscoroutinefunction(call)


def check_subscriber_signature(fn: Callable[..., Any], kind: SubscriberKind) -> None:
    """Raise TypeError now if ``fn`` cannot be called as a ``kind`` subscriber is.

    Found when the subscriber is added rather than at its first message, where the error
    would only show as a failed task or RPC on the sender's side, or a log line for a
    broadcast. A callable whose signature cannot be read (some builtins and C callables)
    is accepted: it gets its chance at the first message.
    """
    if not callable(fn):
        raise TypeError(f"a {kind} subscriber must be callable, not {type(fn).__name__}")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    parameters = _PARAMETERS[kind]
    try:
        signature.bind(*parameters)
    except TypeError as exc:
        expected = f"fn({', '.join(parameters)})"
        raise TypeError(f"{kind} subscriber {_name(fn)} cannot be called as {expected}: its "
                        f"signature is {signature} ({exc})") from None


def _name(fn: Callable[..., Any]) -> str:
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return repr(name)


#: Awaited when a subscriber's outcome is still to come (a future or an awaitable).
OnPending = Callable[[], Awaitable[None]]


async def call_subscriber(fn: Callable[..., Any], *args: Any,
                          on_pending: OnPending | None = None) -> Any:
    """Call ``fn(*args)`` and return its final outcome (awaiting what it returns).

    Cancellation: an async subscriber is cancelled with the caller. A sync subscriber's
    thread cannot be interrupted; the caller abandons it and raises ``trio.Cancelled`` at
    once, and the thread's eventual result is discarded.
    """
    if is_async_callable(fn):
        result = await fn(*args)
    else:
        result = await trio.to_thread.run_sync(
            functools.partial(fn, *args), abandon_on_cancel=True
        )
    return await resolve(result, on_pending)


async def resolve(result: Any, on_pending: OnPending | None = None) -> Any:
    """Await ``result`` if it is an awaitable or a concurrent future, repeatedly.

    ``on_pending`` is awaited before each wait.
    """
    while True:
        is_future = isinstance(result, concurrent.futures.Future)
        if not is_future and not inspect.isawaitable(result):
            return result
        if on_pending is not None:
            await on_pending()
        if is_future:
            result = await wait_concurrent_future(result)
        else:
            result = await _await(result)


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


async def wait_concurrent_future(future: concurrent.futures.Future[Any]) -> Any:
    """Wait for a :class:`concurrent.futures.Future` without blocking Trio.

    Cancelling the caller cancels the future (if it has not started running yet).
    """
    done = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def on_done(_: concurrent.futures.Future[Any]) -> None:
        try:
            token.run_sync_soon(done.set)
        except trio.RunFinishedError:
            pass

    future.add_done_callback(on_done)
    try:
        await done.wait()
    except trio.Cancelled:
        future.cancel()
        raise
    return future.result()
