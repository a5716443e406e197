"""Reconnecting while the names of a communicator's exclusive queues are still held.

RabbitMQ 4 with Khepri keeps the exclusive queues of a node that died until that node comes
back or is forgotten (checked on a 4.3.6 cluster: declaring, deleting or consuming such a
queue gives RESOURCE_LOCKED; a message routed to it is nacked). A communicator that was on
that node must still come back on another one, with its RPC subscribers reachable under their
identifiers, its broadcasts and its control queue.

Here the dead node's queues are stood in for by queues another connection declares under the
same names while the communicator is cut off (through a TCP proxy the test owns): exclusive,
so the names are held, and with ``x-max-length: 0`` and ``reject-publish``, so that what is
routed to them is nacked, as it is by a dead node's queue.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

import kiwitrio
from kiwitrio.backends import QueueSpec, Session, open_session

from .conftest import AMQP_URL, Names
from .tcp_proxy import open_tcp_proxy

DEADLINE = 20
FAST = kiwitrio.ReconnectPolicy(initial_delay=0.05, max_delay=0.5, jitter=0.05,
                                startup_give_up_after=5.0)
#: Exclusive and refusing every message: what a queue left on a dead node looks like.
_DEAD_NODE_QUEUE = {"x-max-length": 0, "x-overflow": "reject-publish"}


async def hold(session: Session, name: str) -> None:
    """Declare ``name`` as a dead node's queue; the communicator's own may take a moment to
    go after its connection was cut (polled, within the caller's deadline)."""
    while True:
        try:
            await session.declare_queue(QueueSpec(name, exclusive=True, auto_delete=False,
                                                  arguments=_DEAD_NODE_QUEUE))
            return
        except kiwitrio.DeliveryFailed:  # RESOURCE_LOCKED: the old one is still there
            await trio.sleep(0.05)


async def test_a_communicator_whose_queue_names_are_held_comes_back_under_new_ones(
        names: Names) -> None:
    heard = trio.Event()

    async def listener(*_args: Any) -> None:
        heard.set()

    async with open_tcp_proxy() as proxy, \
            kiwitrio.open_communicator(proxy.url(), **names.kwargs(),
                                       reconnect=FAST) as worker, \
            kiwitrio.open_communicator(AMQP_URL, **names.kwargs()) as client, \
            open_session(AMQP_URL, heartbeat=0) as dead_node:
        await worker.add_rpc_subscriber(lambda _c, msg: f"pong {msg}", "pinger")
        await worker.add_broadcast_subscriber(
            kiwitrio.BroadcastFilter(listener, subject="news.*"))
        held = [worker._rpc.queue_name("pinger"), worker._control._queue,
                worker._broadcasts._queue]
        assert all(held)
        seen = proxy.connections_seen
        proxy.block()
        with trio.fail_after(DEADLINE):
            for name in held:
                assert name is not None
                await hold(dead_node, name)
            proxy.unblock()
            await proxy.wait_for_connections(seen + 1)
            # Back under other names: the call reaches it (the held queue nacks it first).
            assert await (await _rpc_when_back(client, "pinger", 1)) == "pong 1"
            while worker.identity not in await client.ping(timeout=0.5):
                pass  # its control queue answers too
            while not heard.is_set():
                await client.broadcast_send("hello", subject="news.today")
                with trio.move_on_after(0.2):
                    await heard.wait()
            assert worker.connection_state is kiwitrio.ConnectionState.CONNECTED
            # Nobody else answers to an identifier nobody has, held names or not.
            with pytest.raises(kiwitrio.UnroutableError):
                await client.rpc_send("nobody", 1)
            # Removed, with its old name still held: calls are refused, at once and saying so.
            await worker.remove_rpc_subscriber("pinger")
            with pytest.raises(kiwitrio.DeliveryFailed, match=r"'pinger'.*left behind"):
                while True:
                    await client.rpc_send("pinger", 2)
                    await trio.sleep(0.05)  # until the removal is seen: polled
        for name in held:
            assert name is not None
            await dead_node.delete_queue(name)


async def _rpc_when_back(comm: kiwitrio.Communicator, recipient: str,
                         msg: Any) -> kiwitrio.ResultHandle:
    """While the recipient reconnects its calls are refused: retry until it is back."""
    while True:
        try:
            return await comm.rpc_send(recipient, msg)
        except (kiwitrio.UnroutableError, kiwitrio.DeliveryFailed):
            await trio.sleep(0.05)
