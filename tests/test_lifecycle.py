"""Opening, closing, errors at the edges."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import kiwitrio

from .conftest import OpenComm

DEADLINE = 10


async def test_every_call_after_close_raises_communicator_closed(open_comm: OpenComm) -> None:
    async with open_comm() as comm:
        queue = comm._default_queue
    assert comm.is_closed()
    calls = [
        comm.task_send(1),
        comm.add_task_subscriber(lambda _c, t: t),
        comm.remove_task_subscriber("x"),
        comm.add_rpc_subscriber(lambda _c, m: m, "x"),
        comm.remove_rpc_subscriber("x"),
        comm.rpc_send("x", 1),
        comm.add_broadcast_subscriber(lambda *a: None),
        comm.remove_broadcast_subscriber("x"),
        comm.broadcast_send(1),
        comm.task_queue("other"),
        queue.task_send(1),
    ]
    for call in calls:
        with pytest.raises(kiwitrio.CommunicatorClosed):
            await call
    with pytest.raises(kiwitrio.CommunicatorClosed):
        async with queue.next_task():
            pass


async def test_pending_results_fail_when_the_communicator_closes(open_comm: OpenComm) -> None:
    async with open_comm() as comm:
        handle = await comm.task_send("nobody works on this")
    with trio.fail_after(DEADLINE), pytest.raises(kiwitrio.CommunicatorClosed):
        await handle


async def test_exception_in_block_comes_out_unwrapped(open_comm: OpenComm) -> None:
    with pytest.raises(ValueError, match="user error"):
        async with open_comm() as comm:
            await comm.add_task_subscriber(lambda _c, t: t)
            raise ValueError("user error")


async def test_cancelling_the_block_closes_the_communicator(open_comm: OpenComm) -> None:
    with trio.move_on_after(0.2) as scope:
        async with open_comm() as comm:
            await comm.add_task_subscriber(lambda _c, t: t)
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert comm.is_closed()


async def test_server_properties(open_comm: OpenComm) -> None:
    async with open_comm() as comm:
        assert comm.server_properties["version"]


async def test_unreachable_broker_names_the_url_without_password() -> None:
    with trio.fail_after(DEADLINE), pytest.raises(kiwitrio.ConnectionFailed) as info:
        async with kiwitrio.open_communicator("amqp://guest:s3cret@127.0.0.1:1/",
                                              reconnect=None):
            pass
    assert "127.0.0.1:1" in str(info.value)
    assert "s3cret" not in str(info.value)


async def test_unsupported_url_scheme() -> None:
    with pytest.raises(ValueError, match="unsupported broker URL"):
        async with kiwitrio.open_communicator("http://example.invalid/"):
            pass


async def test_errors_share_one_base_class() -> None:
    for name in ["RemoteException", "DeliveryFailed", "UnroutableError", "TaskRejected",
                 "QueueEmpty", "DuplicateSubscriberIdentifier", "CommunicatorClosed",
                 "ConnectionFailed", "DecodeError"]:
        assert issubclass(getattr(kiwitrio, name), kiwitrio.KiwitrioError)
    assert issubclass(kiwitrio.UnroutableError, kiwitrio.DeliveryFailed)


async def test_memory_communicators_share_a_broker_by_url(names: Any) -> None:
    url = f"memory://{names.prefix}"
    async with kiwitrio.open_communicator(url, **names.kwargs()) as worker, \
            kiwitrio.open_communicator(url, **names.kwargs()) as client:
        await worker.add_task_subscriber(lambda _c, t: t + 1)
        with trio.fail_after(DEADLINE):
            assert await (await client.task_send(1)) == 2
