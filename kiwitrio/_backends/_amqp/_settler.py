"""Acks and rejects of one consumer channel's deliveries, written in bursts (asyncio side).

Settling a delivery was an asyncio task per delivery, writing one ``basic.ack`` frame each.
A consumer settles its deliveries in bursts (the Trio side handles what one read of the
socket brought), so the :class:`ChannelSettler` of a consumer's channel collects the settles
that arrive together and writes them from one task: the acks of a run of delivery tags with
nothing still unsettled below them as one ``basic.ack`` with ``multiple`` set (one frame for
the broker to process instead of many), the others one by one, in delivery-tag order.

Why ``multiple`` is safe here: it settles every delivery on the channel up to its tag that the
broker still counts as unacknowledged. The settler knows every delivery the channel has had
(:meth:`ChannelSettler.delivered` runs in aiormq's delivery callback, before the Trio side can
see the delivery) and which of them are not settled yet, and merges only acks below the
lowest unsettled one; a delivery not read from the socket yet has a higher tag than any read
before it. What it holds is bounded by the consumer's prefetch window.
"""

from __future__ import annotations

import asyncio
import logging
import math

import aiormq
import aiormq.exceptions

__all__ = ["ChannelSettler"]

logger = logging.getLogger("kiwitrio.connection")  # a public name (docs/configuration.md#logging)

#: One settle: None to ack, else reject with requeue True/False.
_Requeue = bool | None


class ChannelSettler:
    """The acks and rejects of one consumer channel; every method runs on the asyncio side."""

    __slots__ = ("_channel", "_flush_task", "_pending", "_unsettled")

    def __init__(self, channel: aiormq.abc.AbstractChannel) -> None:
        self._channel = channel
        #: Delivered and not settled (nor about to be): bounded by the prefetch window.
        self._unsettled: set[int] = set()
        #: Settled by the Trio side, not written yet: delivery tag -> requeue (None: ack).
        self._pending: dict[int, _Requeue] = {}
        #: The task writing the pending settles, while there is one (referenced: asyncio
        #: keeps only weak references to tasks).
        self._flush_task: asyncio.Task[None] | None = None

    def delivered(self, tag: int) -> None:
        """A delivery arrived on the channel (called before the Trio side sees it)."""
        self._unsettled.add(tag)

    def settle(self, tag: int, requeue: _Requeue) -> None:
        """Ack (``requeue`` None) or reject the delivery ``tag``, with the others settled now."""
        self._unsettled.discard(tag)
        self._pending[tag] = requeue
        if self._flush_task is None:
            self._flush_task = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        try:
            while self._pending:
                for tag, requeue, multiple in self._plan():
                    await self._write(tag, requeue, multiple)
        except (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError,
                ConnectionError) as exc:
            # The channel is gone, and with it its deliveries: the broker requeued them.
            logger.warning("could not settle a delivery, the broker requeued it: %s", exc)
            self._pending.clear()
        finally:
            self._flush_task = None

    def _plan(self) -> list[tuple[int, _Requeue, bool]]:
        """The frames for the settles pending now: (tag, requeue, multiple), in tag order."""
        pending, self._pending = self._pending, {}
        lowest_unsettled = min(self._unsettled, default=math.inf)
        plan: list[tuple[int, _Requeue, bool]] = []
        run_end: int | None = None  # the last ack of a run that one multiple ack settles
        for tag in sorted(pending):
            requeue = pending[tag]
            if tag > lowest_unsettled:
                plan.append((tag, requeue, False))
            elif requeue is None:
                run_end = tag
            else:
                if run_end is not None:
                    plan.append((run_end, None, True))
                    run_end = None
                plan.append((tag, requeue, False))
        if run_end is not None:
            plan.append((run_end, None, True))
        plan.sort(key=lambda frame: frame[0])
        return plan

    async def _write(self, tag: int, requeue: _Requeue, multiple: bool) -> None:
        # Nobody waits for these frames: AMQP does not answer acks and rejects, and once a
        # frame is on the channel's write queue it goes out ahead of anything queued later.
        if requeue is None:
            await self._channel.basic_ack(tag, multiple=multiple, wait=False)
        else:
            await self._channel.basic_reject(tag, requeue=requeue, wait=False)
