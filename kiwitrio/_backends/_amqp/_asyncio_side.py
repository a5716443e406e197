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
import outcome
from aiormq.abc import ChannelFrame
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from ..._bridge import AsyncioOperationAborted
from ..._bridge._base import Report
from ..._ids import new_id

__all__ = [
    "_Connection",
    "_FlowEvent",
    "_close_quietly",
    "_decode_server_properties",
    "_on_underlay",
    "_publish",
    "_publish_soon",
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



def _publish_soon(report: Report, channel: aio_pika.abc.AbstractChannel, exchange: str,
                  routing_key: str, body: bytes, properties: spec.Basic.Properties,
                  mandatory: bool) -> None:
    """Publish on a confirming channel and report once the broker confirmed (or refused).

    For :meth:`AsyncioBridge.run_callback`: no asyncio task per publish. The frames go on
    the connection's write queue at once, and the confirm is awaited through a future that
    aiormq resolves as it does its own: acked, nacked (``DeliveryError``), returned
    unroutable (``PublishError``), or failed with the channel's close reason; the report
    comes from that future's done callback. Where aiormq's publish cannot be skipped safely
    (aiormq 6, a channel busy in one of aiormq's own publishes, a full write queue), it runs
    as a task, as before.
    """
    underlay = _idle_confirming_channel(channel)
    if underlay is None or not _queue_publish(report, underlay, exchange, routing_key, body,
                                              properties, mandatory):
        _publish_in_task(report, channel, exchange, routing_key, body, properties, mandatory)


def _idle_confirming_channel(channel: aio_pika.abc.AbstractChannel) -> aiormq.Channel | None:
    """The aiormq channel under ``channel`` if a publish may bypass aiormq's, else None."""
    if not _PUBLISH_TAKES_WAIT:
        return None  # aiormq 6: not the channel internals this was written against
    underlay = getattr(getattr(channel, "_channel", None), "channel", None)
    if not isinstance(underlay, aiormq.Channel) or underlay.is_closed:
        return None
    if not underlay.publisher_confirms:
        return None
    # What _queue_publish uses, as aiormq 7.2 has it; another layout takes the task way.
    if not (isinstance(getattr(underlay, "write_queue", None), asyncio.Queue)
            and isinstance(getattr(underlay, "confirmations", None), dict)
            and isinstance(getattr(underlay, "message_id_delivery_tag", None), dict)):
        return None
    # aiormq's basic_publish takes a delivery tag and then waits, under the channel's lock,
    # for room on the write queue: a frame queued meanwhile would reach the broker ahead of
    # it with a later tag, and the confirms would be matched to the wrong messages.
    lock = getattr(underlay, "_Channel__lock", None)
    if not isinstance(lock, asyncio.Lock) or lock.locked():
        return None
    return underlay


def _queue_publish(report: Report, underlay: aiormq.Channel, exchange: str, routing_key: str,
                   body: bytes, properties: spec.Basic.Properties, mandatory: bool) -> bool:
    """Queue the frames and track the confirm; False (nothing done) if the queue is full."""
    if not properties.message_id:
        # aiormq matches a returned message to its delivery tag by message id.
        properties.message_id = new_id()
    message_id = properties.message_id
    size = underlay.max_content_size
    frames: list[Any] = [
        spec.Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=mandatory),
        ContentHeader(properties=properties, body_size=len(body)),
        *(ContentBody(body[start:start + size]) for start in range(0, len(body), size)),
    ]
    try:
        underlay.write_queue.put_nowait(
            ChannelFrame.marshall(channel_number=underlay.number, frames=frames))
    except asyncio.QueueFull:
        return False
    # The tag is the broker's count of publishes on the channel: taken with the frame
    # queued, in the same step, so the two cannot be reordered.
    underlay.delivery_tag += 1
    tag = underlay.delivery_tag
    confirmation = underlay.create_future()  # failed by aiormq when the channel closes
    underlay.confirmations[tag] = confirmation
    underlay.message_id_delivery_tag[message_id] = tag

    def confirmed(future: asyncio.Future[Any]) -> None:
        if underlay.message_id_delivery_tag.get(message_id) == tag:
            del underlay.message_id_delivery_tag[message_id]
        report(_outcome_of(future))

    confirmation.add_done_callback(confirmed)
    return True


#: The publishes that went the task way, referenced while they run (asyncio keeps weak ones).
_publishing: set[asyncio.Task[None]] = set()


def _publish_in_task(report: Report, *args: Any) -> None:
    task = asyncio.get_running_loop().create_task(_publish(*args))
    _publishing.add(task)

    def finished(task: asyncio.Task[None]) -> None:
        _publishing.discard(task)
        report(_outcome_of(task))

    task.add_done_callback(finished)


def _outcome_of(future: asyncio.Future[Any]) -> outcome.Outcome[None]:
    # An asyncio.CancelledError must not reach Trio code (see AsyncioOperationAborted). A
    # closing connection fails the pending confirms with its close reason, which can be
    # one too (the connection's tasks were cancelled).
    exc = None if future.cancelled() else future.exception()
    if future.cancelled() or isinstance(exc, asyncio.CancelledError):
        aborted = AsyncioOperationAborted(
            "the publish was cancelled by asyncio (its channel or connection closed)")
        aborted.__cause__ = exc
        return outcome.Error(aborted)
    return outcome.Value(None) if exc is None else outcome.Error(exc)


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
