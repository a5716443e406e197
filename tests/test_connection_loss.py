"""Connections cut under a communicator: reconnection, and what happens to work in flight.

Connections go through a TCP proxy owned by the test (tests/tcp_proxy.py); the shared broker
is never touched.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest
import trio

import kiwitrio
from kiwitrio.backends import QueueSpec, open_session

from .conftest import AMQP_URL, Names
from .tcp_proxy import open_tcp_proxy

DEADLINE = 20
FAST = kiwitrio.ReconnectPolicy(initial_delay=0.05, max_delay=0.5, jitter=0.05,
                                startup_give_up_after=5.0)


async def test_task_of_a_worker_that_lost_its_connection_is_redelivered(names: Names) -> None:
    started = trio.Event()

    async def stuck(_comm: Any, _task: Any) -> str:
        started.set()
        await trio.sleep_forever()
        return "never"

    async with open_tcp_proxy() as proxy, \
            kiwitrio.open_communicator(AMQP_URL, **names.kwargs()) as sender:
        handle = await sender.task_send("survive me")
        with trio.fail_after(DEADLINE):
            async with kiwitrio.open_communicator(proxy.url(), **names.kwargs(),
                                                  reconnect=None) as doomed:
                await doomed.add_task_subscriber(stuck)
                await started.wait()
                assert proxy.cut() == 1
                async with kiwitrio.open_communicator(AMQP_URL, **names.kwargs()) as rescuer:
                    await rescuer.add_task_subscriber(lambda _c, task: f"rescued {task}")
                    assert await handle == "rescued survive me"


async def test_without_reconnection_sends_over_a_dead_connection_raise(names: Names) -> None:
    async with open_tcp_proxy() as proxy, \
            kiwitrio.open_communicator(proxy.url(), **names.kwargs(), reconnect=None) as comm:
        proxy.cut()
        with trio.fail_after(DEADLINE), pytest.raises(kiwitrio.ConnectionFailed):
            # The first sends may still be written to the socket before the loss is seen;
            # none may be reported as delivered without the broker's confirm.
            for _ in range(100):
                await comm.task_send("x")


async def test_reconnects_and_restores_every_subscriber(names: Names) -> None:
    states: list[kiwitrio.ConnectionState] = []
    got_broadcast = trio.Event()

    async def listener(*_args: Any) -> None:
        got_broadcast.set()

    async with open_tcp_proxy() as proxy:
        async with kiwitrio.open_communicator(
                proxy.url(), **names.kwargs(), reconnect=FAST,
                on_connection_state=states.append) as worker, \
                kiwitrio.open_communicator(AMQP_URL, **names.kwargs()) as client:
            await worker.add_task_subscriber(lambda _c, task: task + 1, identifier="tasks")
            await worker.add_rpc_subscriber(lambda _c, msg: f"pong {msg}", "pinger")
            await worker.add_broadcast_subscriber(
                kiwitrio.BroadcastFilter(listener, subject="news.*"))
            assert worker.connection_state is kiwitrio.ConnectionState.CONNECTED
            for _ in range(3):
                assert proxy.cut() >= 1
                with trio.fail_after(DEADLINE):
                    assert await (await client.task_send(1)) == 2
                    assert await (await _rpc_when_back(client, "pinger", 1)) == "pong 1"
                    got_broadcast = trio.Event()
                    while not got_broadcast.is_set():
                        await client.broadcast_send("hello", subject="news.today")
                        with trio.move_on_after(0.2):
                            await got_broadcast.wait()
            # The same identifiers are back: adding them again is refused.
            with pytest.raises(kiwitrio.DuplicateSubscriberIdentifier):
                await worker.add_rpc_subscriber(lambda _c, m: m, "pinger")
    assert states[0] is kiwitrio.ConnectionState.CONNECTED
    assert states.count(kiwitrio.ConnectionState.RECONNECTING) == 3
    assert states[-2:] == [kiwitrio.ConnectionState.CONNECTED, kiwitrio.ConnectionState.CLOSED]


async def _rpc_when_back(comm: kiwitrio.Communicator, recipient: str,
                         msg: Any) -> kiwitrio.ResultHandle:
    """RPC recipients are unroutable while they reconnect: retry until they are back."""
    while True:
        try:
            return await comm.rpc_send(recipient, msg)
        except kiwitrio.UnroutableError:
            await trio.sleep(0.05)


async def test_sends_during_an_outage_wait_and_then_go_out(names: Names) -> None:
    lost = trio.Event()

    def on_state(state: kiwitrio.ConnectionState) -> None:
        if state is kiwitrio.ConnectionState.RECONNECTING:
            lost.set()

    async with open_tcp_proxy() as proxy:
        async with kiwitrio.open_communicator(proxy.url(), **names.kwargs(), reconnect=FAST,
                                              on_connection_state=on_state) as sender, \
                kiwitrio.open_communicator(AMQP_URL, **names.kwargs()) as worker:
            await worker.add_task_subscriber(lambda _c, task: task * 3)
            proxy.block()
            sent: list[kiwitrio.ResultHandle] = []

            async def send() -> None:
                sent.append(await sender.task_send(5))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                with trio.fail_after(DEADLINE):
                    await lost.wait()
                    # Several refused reconnection attempts, the send still waiting.
                    await proxy.wait_for_connections(proxy.connections_seen + 3)
                assert not sent  # the broker is unreachable: not reported as sent
                proxy.unblock()
            with trio.fail_after(DEADLINE):
                assert await sent[0] == 15


async def test_pending_result_arrives_after_the_sender_reconnected(names: Names) -> None:
    release = trio.Event()
    started = trio.Event()

    async def slow(_comm: Any, task: str) -> str:
        started.set()
        await release.wait()
        return task.upper()

    async with open_tcp_proxy() as proxy:
        async with kiwitrio.open_communicator(proxy.url(), **names.kwargs(),
                                              reconnect=FAST) as sender, \
                kiwitrio.open_communicator(AMQP_URL, **names.kwargs()) as worker:
            await worker.add_task_subscriber(slow)
            handle = await sender.task_send("late")
            with trio.fail_after(DEADLINE):
                await started.wait()
                proxy.cut()
                release.set()  # the reply goes to the reply queue while the sender is away
                assert await handle == "LATE"


async def test_broker_down_at_start_then_up(names: Names) -> None:
    async with open_tcp_proxy() as proxy:
        proxy.block()
        opened = trio.Event()

        async def open_and_use() -> None:
            async with kiwitrio.open_communicator(proxy.url(), **names.kwargs(),
                                                  reconnect=FAST) as comm:
                opened.set()
                await comm.add_task_subscriber(lambda _c, t: t)
                assert await (await comm.task_send("up")) == "up"

        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(open_and_use)
                await proxy.wait_for_connections(3)  # it is trying, and failing
                assert not opened.is_set()
                proxy.unblock()


async def test_unreachable_at_start_gives_up_naming_the_url(names: Names) -> None:
    policy = kiwitrio.ReconnectPolicy(initial_delay=0.05, max_delay=0.1,
                                      startup_give_up_after=0.5)
    with trio.fail_after(DEADLINE), pytest.raises(kiwitrio.ConnectionFailed) as info:
        async with kiwitrio.open_communicator("amqp://guest:s3cret@127.0.0.1:1/",
                                              **names.kwargs(), reconnect=policy):
            pass
    assert "127.0.0.1:1" in str(info.value)
    assert "s3cret" not in str(info.value)


async def test_outage_longer_than_the_policy_raises_from_the_block(names: Names) -> None:
    policy = kiwitrio.ReconnectPolicy(initial_delay=0.05, max_delay=0.1, give_up_after=0.5)
    async with open_tcp_proxy() as proxy:
        with trio.fail_after(DEADLINE), pytest.raises(kiwitrio.ConnectionFailed,
                                                      match="gave up"):
            async with kiwitrio.open_communicator(proxy.url(), **names.kwargs(),
                                                  reconnect=policy) as comm:
                proxy.block()
                await trio.sleep_forever()
        assert comm.is_closed()


async def _double(_comm: Any, task: int) -> int:
    return task * 2


async def _doubling_worker(comm: kiwitrio.Communicator) -> tuple[Any, Any, Any]:
    """Subscribe ``_double``, see it answer once; its resilient consumer, the AMQP consumer
    under it, and the AMQP session it is on."""
    await comm.add_task_subscriber(_double)
    with trio.fail_after(DEADLINE):
        assert await (await comm.task_send(1)) == 2
    consumer = comm._default_queue._consumer
    assert consumer is not None
    return consumer, consumer._inner, comm._ctx.session.__dict__["_current"]  # type: ignore[attr-defined]


async def test_consumer_whose_channel_the_broker_closed_consumes_again(names: Names) -> None:
    """The broker closes a consumer's channel (as on its consumer timeout): the
    subscriber must not go silent while the connection lives on."""
    async with kiwitrio.open_communicator(AMQP_URL, **names.kwargs(), reconnect=FAST) as comm:
        consumer, inner, session = await _doubling_worker(comm)
        # Acknowledging an unknown delivery tag is a channel error: the broker closes it.
        underlay = await session.bridge.run(inner._channel.get_underlay_channel)
        await session.bridge.run(underlay.basic_ack, 999_999)
        with trio.fail_after(DEADLINE):
            assert await (await comm.task_send(2)) == 4
        assert consumer._inner is not inner
        assert comm.connection_state is kiwitrio.ConnectionState.CONNECTED


@pytest.mark.skipif(sys.version_info < (3, 11),
                    reason="aiormq 6 (Python 3.10) reports no broker-sent basic.cancel")
async def test_consumer_the_broker_cancelled_consumes_again(names: Names) -> None:
    """The broker cancels a consumer with basic.cancel and keeps its channel open (its queue
    was deleted; from RabbitMQ 4.3 on, also a consumer timeout): it must consume again."""
    async with kiwitrio.open_communicator(AMQP_URL, **names.kwargs(), reconnect=FAST) as comm:
        _consumer, inner, session = await _doubling_worker(comm)
        await session.delete_queue(names.task_queue)
        with trio.fail_after(DEADLINE):
            # Another communicator declares the queue again; the consumer comes back to it.
            async with kiwitrio.open_communicator(AMQP_URL, **names.kwargs()) as other:
                assert await (await other.task_send(2)) == 4
        assert inner._channel.is_closed or inner._cancelled
        assert comm.connection_state is kiwitrio.ConnectionState.CONNECTED


async def test_a_queue_declared_once_is_not_declared_again_on_reconnecting(
        names: Names) -> None:
    """The catalogue of task queues is declared with redeclare=False: if the node that has it
    is down, reconnecting must not wait for it (issue 11). Here: a queue deleted behind the
    session's back comes back after a reconnection only if it is redeclared."""
    kept, once = names.unique("kept"), names.unique("once")
    async with open_tcp_proxy() as proxy, \
            open_session(proxy.url(), heartbeat=0, reconnect=FAST) as session, \
            open_session(AMQP_URL, heartbeat=0) as other:
        for name, redeclare in ((kept, True), (once, False)):
            await session.declare_queue(QueueSpec(name, durable=True, redeclare=redeclare))
            await other.delete_queue(name)
        seen = proxy.connections_seen
        proxy.cut()
        with trio.fail_after(DEADLINE):
            await proxy.wait_for_connections(seen + 1)
            while True:  # the new connection declares what it must: polled
                if await other.inspect_queue(kept) is not None:
                    break
                await trio.sleep(0.05)
        assert await session.inspect_queue(once) is None
        await other.delete_queue(kept)
