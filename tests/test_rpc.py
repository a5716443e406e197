"""RPC semantics, against RabbitMQ and the in-memory broker."""

from __future__ import annotations

import concurrent.futures
from typing import Any

import pytest
import trio

import kiwitrio
from kiwitrio._backends import NegativeAck

from .conftest import OpenComm

DEADLINE = 10


async def test_rpc_round_trip_sync_and_async(open_comm: OpenComm) -> None:
    async def async_upper(_comm: Any, msg: str) -> str:
        return msg.upper()

    async with open_comm() as server, open_comm() as client:
        await server.add_rpc_subscriber(lambda _comm, msg: {"echo": msg}, "proc-1")
        await server.add_rpc_subscriber(async_upper, "proc-2")
        with trio.fail_after(DEADLINE):
            assert await (await client.rpc_send("proc-1", [1, 2])) == {"echo": [1, 2]}
            assert await (await client.rpc_send("proc-2", "pause")) == "PAUSE"


async def test_rpc_to_nobody_is_unroutable_at_once(open_comm: OpenComm) -> None:
    async with open_comm() as comm:
        with trio.fail_after(2), pytest.raises(kiwitrio.UnroutableError):
            await comm.rpc_send("nobody-listens-here", "hello?")


async def test_rpc_remote_exception(open_comm: OpenComm) -> None:
    def kill(_comm: Any, msg: Any) -> None:
        raise PermissionError(f"will not {msg}")

    async with open_comm() as comm:
        await comm.add_rpc_subscriber(kill, "proc")
        handle = await comm.rpc_send("proc", "die")
        with trio.fail_after(DEADLINE), pytest.raises(kiwitrio.RemoteException) as info:
            await handle
    assert info.value.remote_type == "PermissionError"
    assert info.value.remote_message == "will not die"
    assert "in kill" in info.value.remote_traceback


async def test_duplicate_rpc_identifier_here_and_elsewhere(open_comm: OpenComm) -> None:
    async with open_comm() as first, open_comm() as second:
        await first.add_rpc_subscriber(lambda _c, m: m, "unique")
        with pytest.raises(kiwitrio.DuplicateSubscriberIdentifier):
            await first.add_rpc_subscriber(lambda _c, m: m, "unique")
        with pytest.raises(kiwitrio.DuplicateSubscriberIdentifier):
            await second.add_rpc_subscriber(lambda _c, m: m, "unique")
        # The failed attempt left the second communicator working.
        await second.add_rpc_subscriber(lambda _c, m: m, "other")
        with trio.fail_after(DEADLINE):
            assert await (await first.rpc_send("other", 5)) == 5


async def test_removed_rpc_subscriber_becomes_unroutable(open_comm: OpenComm) -> None:
    async with open_comm() as comm:
        await comm.add_rpc_subscriber(lambda _c, m: m, "temp")
        with trio.fail_after(DEADLINE):
            assert await (await comm.rpc_send("temp", 1)) == 1
        await comm.remove_rpc_subscriber("temp")
        with trio.fail_after(2), pytest.raises(kiwitrio.UnroutableError):
            await comm.rpc_send("temp", 2)
        with pytest.raises(ValueError, match="no RPC subscriber"):
            await comm.remove_rpc_subscriber("temp")


async def test_rpc_to_a_just_removed_subscriber_is_always_unroutable(
    open_comm: OpenComm,
) -> None:
    # RabbitMQ 4.3 answers some of these calls with a negative confirm (Basic.Nack: the queue
    # was still being deleted) rather than returning them (Basic.Return); both must raise
    # UnroutableError. About 4 calls in 10 were nacked there: 20 rounds catch it.
    async with open_comm() as comm:
        for round_ in range(20):
            identifier = f"temp-{round_}"
            await comm.add_rpc_subscriber(lambda _c, m: m, identifier)
            with trio.fail_after(DEADLINE):
                assert await (await comm.rpc_send(identifier, round_)) == round_
            await comm.remove_rpc_subscriber(identifier)
            with trio.fail_after(2), pytest.raises(kiwitrio.UnroutableError):
                await comm.rpc_send(identifier, "too late")


async def test_refused_rpc_call_is_unroutable_only_if_the_queue_is_gone(
    open_comm: OpenComm, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The broker's refusal (a nack) stood in for by the session's publish.
    async with open_comm() as comm:
        session = comm._ctx.session

        async def refused(*_args: Any, **_kwargs: Any) -> None:
            raise NegativeAck("the broker did not accept the message: Basic.Nack")

        await comm.add_rpc_subscriber(lambda _c, m: m, "alive")
        monkeypatch.setattr(session, "publish", refused)
        with trio.fail_after(DEADLINE):
            with pytest.raises(kiwitrio.UnroutableError, match=r"nobody subscribes.*'gone'"):
                await comm.rpc_send("gone", 1)
            # Its queue exists: the refusal is about something else and says so.
            with pytest.raises(kiwitrio.DeliveryFailed) as info:
                await comm.rpc_send("alive", 1)
        assert not isinstance(info.value, kiwitrio.UnroutableError)


async def test_rpc_subscriber_may_return_a_future(open_comm: OpenComm) -> None:
    future: concurrent.futures.Future[str] = concurrent.futures.Future()

    async with open_comm() as comm:
        await comm.add_rpc_subscriber(lambda _c, _m: future, "status")
        handle = await comm.rpc_send("status", None)
        with trio.move_on_after(0.2):
            await handle
        assert not handle.done()
        future.set_result("running")
        with trio.fail_after(DEADLINE):
            assert await handle == "running"


async def test_rpc_subscriber_can_send_a_task_and_wait(open_comm: OpenComm) -> None:
    async def delegate(comm: kiwitrio.Communicator, msg: int) -> Any:
        return await (await comm.task_send(msg))

    async with open_comm() as comm:
        await comm.add_task_subscriber(lambda _c, task: task + 100)
        await comm.add_rpc_subscriber(delegate, "delegator")
        with trio.fail_after(DEADLINE):
            assert await (await comm.rpc_send("delegator", 1)) == 101


async def test_rpc_identifier_must_be_a_string(open_comm: OpenComm) -> None:
    async with open_comm() as comm:
        with pytest.raises(TypeError):
            await comm.add_rpc_subscriber(lambda _c, m: m, 5)  # type: ignore[arg-type]
