"""What a clean shutdown and a lost connection say in the logs: nothing alarming, nothing
that blames the broker for what was the network."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest
import trio

import kiwitrio
from kiwitrio._backends._amqp import _consumer as amqp_consumer

from .conftest import AMQP_URL, Names
from .tcp_proxy import open_tcp_proxy

DEADLINE = 20
FAST = kiwitrio.ReconnectPolicy(initial_delay=0.05, max_delay=0.5, jitter=0.05,
                                startup_give_up_after=5.0)
STOPPED = "the broker stopped the consumer"


class _Bridge:
    """Records what the consumer hands to asyncio instead of running it."""

    def __init__(self) -> None:
        self.started: list[tuple[Any, ...]] = []

    def start_in_asyncio(self, fn: Any, *args: Any) -> None:
        self.started.append((fn, *args))


def _consumer(prefetch_count: int) -> tuple[Any, _Bridge]:
    bridge = _Bridge()
    session = SimpleNamespace(bridge=bridge, spawn_close_channel=lambda _channel: None)
    channel = SimpleNamespace(is_closed=False)
    return amqp_consumer._AmqpConsumer(session, "q", channel, prefetch_count), bridge  # type: ignore[arg-type]


def _message(tag: int) -> Any:
    properties = SimpleNamespace(content_type=None, correlation_id=None, reply_to=None,
                                 headers=None, user_id=None)
    return SimpleNamespace(header=SimpleNamespace(properties=properties), body=b"",
                           redelivered=False, exchange="", routing_key="q",
                           channel=object(), delivery_tag=tag)


def test_a_delivery_after_the_stream_ended_is_requeued_quietly(
        caplog: pytest.LogCaptureFixture) -> None:
    """At close (Ctrl-C), deliveries already on their way from asyncio land after the
    stream ended: given back, at DEBUG, not an ERROR."""
    consumer, bridge = _consumer(prefetch_count=4)
    consumer.end()
    with caplog.at_level(logging.DEBUG, logger="kiwitrio"):
        consumer._deliver(_message(7))
    assert [r.levelname for r in caplog.records if r.name == "kiwitrio.connection"] == ["DEBUG"]
    assert [(fn, args[-1]) for fn, *args in bridge.started] == [(amqp_consumer._reject_quietly, 7)]
    assert consumer._unsettled == 0


def test_a_delivery_beyond_the_prefetch_window_is_an_error(
        caplog: pytest.LogCaptureFixture) -> None:
    consumer, bridge = _consumer(prefetch_count=1)
    with caplog.at_level(logging.DEBUG, logger="kiwitrio"):
        consumer._deliver(_message(1))
        consumer._deliver(_message(2))  # the broker ignored prefetch: should never happen
    assert [r.levelname for r in caplog.records if r.name == "kiwitrio.connection"] == ["ERROR"]
    assert [args[-1] for _fn, *args in bridge.started] == [2]


async def test_a_lost_connection_does_not_blame_the_broker_for_the_consumers(
        names: Names, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="kiwitrio")
    async with open_tcp_proxy() as proxy, \
            kiwitrio.open_communicator(proxy.url(), **names.kwargs(),
                                       reconnect=FAST) as worker, \
            kiwitrio.open_communicator(AMQP_URL, **names.kwargs()) as client:
        await worker.add_task_subscriber(lambda _c, task: task + 1)
        await worker.add_broadcast_subscriber(lambda *_args: None)
        for _ in range(3):
            assert proxy.cut() >= 1
            with trio.fail_after(DEADLINE):
                assert await (await client.task_send(1)) == 2
    messages = [r.getMessage() for r in caplog.records]
    assert any("lost the connection" in m for m in messages), messages
    assert not [m for m in messages if STOPPED in m]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_channel_the_broker_closed_is_still_reported(
        names: Names, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="kiwitrio")
    async with kiwitrio.open_communicator(AMQP_URL, **names.kwargs(), reconnect=FAST) as comm:
        await comm.add_task_subscriber(lambda _c, task: task * 2)
        with trio.fail_after(DEADLINE):
            assert await (await comm.task_send(1)) == 2
        consumer = comm._default_queue._consumer
        inner = consumer._inner  # type: ignore[union-attr]
        session = comm._ctx.session._current  # type: ignore[attr-defined]
        # Acknowledging an unknown delivery tag is a channel error: the broker closes it.
        underlay = await session.bridge.run(inner._channel.get_underlay_channel)
        await session.bridge.run(underlay.basic_ack, 999_999)
        with trio.fail_after(DEADLINE):
            assert await (await comm.task_send(2)) == 4
    assert [r for r in caplog.records if STOPPED in r.getMessage()]
