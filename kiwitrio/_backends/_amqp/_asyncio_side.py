"""Code that runs on the asyncio side of the bridge: aiormq hooks, and the small coroutines the
Trio side starts there."""


from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import aio_pika
import aiormq
import aiormq.exceptions
from pamqp import commands as spec

__all__ = [
    "_Connection",
    "_FlowEvent",
    "_close_quietly",
    "_decode_server_properties",
    "_on_underlay",
    "_publish",
]

logger = logging.getLogger("kiwitrio.connection")  # a public name (docs/configuration.md#logging)

T = TypeVar("T")


class _FlowEvent(asyncio.Event):
    """aiormq's "connection unblocked" event, telling ``changed(blocked)`` of each change."""

    def __init__(self, changed: Callable[[bool], None]) -> None:
        super().__init__()
        super().set()  # replaces an event that was set: the connection is not blocked
        self._changed = changed

    def set(self) -> None:
        if not self.is_set():
            super().set()
            self._changed(False)

    def clear(self) -> None:
        if self.is_set():
            super().clear()
            self._changed(True)


class _Connection(aio_pika.Connection):
    """aio-pika's connection, safe to garbage-collect in any thread.

    aio-pika's ``__del__`` closes an unclosed connection with ``ensure_future(self.close())``
    on the collecting thread's loop. kiwitrio closes every connection it got; the ones left
    unclosed are those abandoned mid-connect (an attempt that timed out), and those may be
    collected in the Trio thread, where that makes a ``close()`` coroutine that never runs
    (a RuntimeWarning). Here whatever such a connection holds is closed on its own loop.
    """

    def __del__(self) -> None:
        transport = getattr(self, "transport", None)
        if transport is None:
            return  # never connected, or closed: nothing to release
        try:
            self.loop.call_soon_threadsafe(_close_abandoned, transport)
        except RuntimeError:
            pass  # the loop is closed: the bridge aborted its sockets already


#: The closing of abandoned connections, referenced while they run (asyncio keeps weak ones).
_closing_abandoned: set[asyncio.Task[Any]] = set()


def _close_abandoned(transport: aio_pika.abc.UnderlayConnection) -> None:
    task = asyncio.ensure_future(transport.close(None))
    _closing_abandoned.add(task)
    task.add_done_callback(_closing_abandoned.discard)


async def _on_underlay(channel: aio_pika.abc.AbstractChannel,
                       fn: Callable[[aiormq.abc.AbstractChannel], Awaitable[T]]) -> T:
    return await fn(await channel.get_underlay_channel())



#: aiormq 7's basic_publish can skip waiting for the socket write (``wait``); aiormq 6's cannot.
_PUBLISH_TAKES_WAIT = "wait" in inspect.signature(aiormq.Channel.basic_publish).parameters


async def _publish(channel: aio_pika.abc.AbstractChannel, exchange: str, routing_key: str,
                   body: bytes, properties: spec.Basic.Properties, mandatory: bool) -> None:
    underlay = await channel.get_underlay_channel()
    # On a confirming channel (kiwitrio publishes on no other) wait for the broker's confirm
    # only, not also for the frame to be written to the socket: a confirm comes after the
    # write anyway. aiormq waits for the write while it holds the channel's lock, which
    # serialises concurrent publishes on the socket writes and costs a future and a writer
    # drain per message; without it a burst of publishes is queued in one go.
    # (aiormq 6, on Python 3.10, always waits.)
    confirmed = _PUBLISH_TAKES_WAIT and bool(getattr(underlay, "publisher_confirms", False))
    options: dict[str, Any] = {"wait": False} if confirmed else {}
    await underlay.basic_publish(body, exchange=exchange, routing_key=routing_key,
                                 properties=properties, mandatory=mandatory, **options)



async def _close_quietly(channel: aio_pika.abc.AbstractChannel) -> None:
    if channel.is_closed:
        return
    try:
        await channel.close()
    except Exception as exc:
        logger.debug("error while closing a channel: %r", exc)


def _decode_server_properties(props: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value.decode() if isinstance(value, bytes) else value
            for key, value in props.items()}
