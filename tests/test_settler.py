"""The consumer channel's settler: acks merged with ``multiple`` only below the lowest delivery
still unsettled, rejects and the rest one by one, in delivery-tag order."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiormq.exceptions
import pytest

from kiwitrio._backends._amqp._settler import ChannelSettler


class _Channel:
    """Records the frames written instead of writing them."""

    def __init__(self, fail: bool = False) -> None:
        self.frames: list[tuple[Any, ...]] = []
        self._fail = fail

    async def basic_ack(self, tag: int, multiple: bool = False, wait: bool = True) -> None:
        if self._fail:
            raise aiormq.exceptions.ChannelInvalidStateError("closed")
        assert not wait
        self.frames.append(("ack", tag, multiple))

    async def basic_reject(self, tag: int, requeue: bool = True, wait: bool = True) -> None:
        assert not wait
        self.frames.append(("reject", tag, requeue))


def _run(channel: _Channel, delivered: range, settles: list[tuple[int, bool | None]],
         ) -> ChannelSettler:
    async def main() -> ChannelSettler:
        settler = ChannelSettler(channel)  # type: ignore[arg-type]
        for tag in delivered:
            settler.delivered(tag)
        for tag, requeue in settles:
            settler.settle(tag, requeue)
        for _ in range(3):
            await asyncio.sleep(0)
        return settler

    return asyncio.run(main())


def test_a_burst_of_acks_is_one_multiple_ack() -> None:
    channel = _Channel()
    _run(channel, range(1, 6), [(3, None), (1, None), (2, None), (5, None), (4, None)])
    assert channel.frames == [("ack", 5, True)]


def test_acks_above_an_unsettled_delivery_go_one_by_one() -> None:
    channel = _Channel()
    settler = _run(channel, range(1, 6), [(1, None), (2, None), (4, None), (5, None)])
    assert channel.frames == [("ack", 2, True), ("ack", 4, False), ("ack", 5, False)]
    # Once the gap is settled, the next merged ack covers it (4 and 5 are acked already).
    channel.frames.clear()

    async def settle_the_gap() -> None:
        settler.delivered(6)
        settler.settle(3, None)
        settler.settle(6, None)
        await asyncio.sleep(0)

    asyncio.run(settle_the_gap())
    assert channel.frames == [("ack", 6, True)]


def test_rejects_keep_their_place() -> None:
    channel = _Channel()
    _run(channel, range(1, 5), [(1, None), (2, True), (3, None), (4, False)])
    assert channel.frames == [("ack", 1, True), ("reject", 2, True), ("ack", 3, True),
                              ("reject", 4, False)]


def test_a_closed_channel_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    channel = _Channel(fail=True)
    with caplog.at_level(logging.WARNING, logger="kiwitrio.connection"):
        settler = _run(channel, range(1, 3), [(1, None), (2, None)])
    assert "requeued" in caplog.text
    assert not settler._pending and settler._flush_task is None
