"""The core's hooks for kiwiPy's protocol: "pending" replies and ordered broadcast subscribers.

kiwitrio_sync.RmqThreadCommunicator builds kiwiPy's nested futures and in-order broadcasts on
these; here they are checked on the Trio API, against RabbitMQ and the in-memory broker.
"""

from __future__ import annotations

import concurrent.futures
from typing import Any

import trio

import kiwitrio

from .conftest import OpenComm

DEADLINE = 10


async def _pending_replies(handle: kiwitrio.ResultHandle, count: int) -> None:
    """Wait until ``handle`` has had ``count`` "pending" replies."""
    enough = trio.Event()

    def check(h: kiwitrio.ResultHandle) -> None:
        if h.pending_replies >= count:
            enough.set()

    handle.add_pending_callback(check)
    check(handle)  # those that came before the callback was added
    await enough.wait()


async def test_pending_replies_are_counted_and_the_result_is_final(open_comm: OpenComm) -> None:
    inner: concurrent.futures.Future[str] = concurrent.futures.Future()
    outer: concurrent.futures.Future[Any] = concurrent.futures.Future()
    outer.set_result(inner)  # a future of a future: two "pending" replies
    seen: list[int] = []
    async with open_comm() as server, open_comm() as client:
        await server.add_rpc_subscriber(lambda _c, _m: outer, "nested", pending_replies=True)
        await server.add_rpc_subscriber(lambda _c, _m: outer, "plain")
        with trio.fail_after(DEADLINE):
            handle = await client.rpc_send("nested", None)
            handle.add_pending_callback(lambda h: seen.append(h.pending_replies))
            await _pending_replies(handle, 2)
            assert not handle.done()
            inner.set_result("final")
            assert await handle == "final"
            assert handle.pending_replies == 2
            # Without the option nothing is sent before the result.
            quiet = await client.rpc_send("plain", None)
            assert await quiet == "final" and quiet.pending_replies == 0
    assert seen[-1] == 2


async def test_task_subscribers_send_pending_replies_when_asked(open_comm: OpenComm) -> None:
    later: concurrent.futures.Future[int] = concurrent.futures.Future()
    async with open_comm() as comm:
        await comm.add_task_subscriber(lambda _c, _t: later, pending_replies=True)
        with trio.fail_after(DEADLINE):
            handle = await comm.task_send("t")
            await _pending_replies(handle, 1)
            later.set_result(7)
            assert await handle == 7
            assert handle.pending_replies == 1


async def test_ordered_broadcast_subscriber_sees_broadcasts_one_at_a_time(
        open_comm: OpenComm) -> None:
    order: list[int] = []
    busy = 0
    overlapped = False
    done = trio.Event()

    async def slow(_c: Any, body: Any, *_rest: Any) -> None:
        nonlocal busy, overlapped
        busy += 1
        overlapped = overlapped or busy > 1
        await trio.sleep(0.05 if body == 0 else 0)
        busy -= 1
        order.append(body)
        if len(order) == 10:
            done.set()

    async with open_comm() as comm:
        await comm.add_broadcast_subscriber(slow, "ordered", ordered=True)
        with trio.fail_after(DEADLINE):
            for n in range(10):
                await comm.broadcast_send(n)
            await done.wait()
        assert order == list(range(10)) and not overlapped
        await comm.remove_broadcast_subscriber("ordered")
        await comm.broadcast_send(99)  # no longer delivered (and nothing breaks)


async def test_a_kiwitrio_sender_ignores_pending_replies(open_comm: OpenComm) -> None:
    # Between faces: a sender that does not count them simply gets the result.
    later: concurrent.futures.Future[str] = concurrent.futures.Future()
    async with open_comm() as server, open_comm() as client:
        await server.add_rpc_subscriber(lambda _c, _m: later, "later", pending_replies=True)
        with trio.fail_after(DEADLINE):
            handle = await client.rpc_send("later", None)
            with trio.move_on_after(0.2):
                await handle
            assert not handle.done()
            later.set_result("at last")
            assert await handle == "at last"
    assert isinstance(handle, kiwitrio.ResultHandle)
