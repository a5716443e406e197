"""Messages that cannot be handled are rejected visibly and never stop the communicator."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio

import kiwitrio
from kiwitrio._backends import OutgoingMessage

from .conftest import OpenComm

DEADLINE = 10


async def _publish_raw(comm: kiwitrio.Communicator, exchange: str, routing_key: str,
                       body: bytes, content_type: str = kiwitrio.CBOR_CONTENT_TYPE) -> None:
    message = OutgoingMessage(body, content_type, persistent=True)
    await comm._ctx.session.publish(exchange, routing_key, message, mandatory=True)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"\xff\xfe garbage", kiwitrio.CBOR_CONTENT_TYPE),
        (kiwitrio.cbor_encode("fine body"), "text/x-unknown"),
    ],
    ids=["garbage-bytes", "unknown-content-type"],
)
async def test_poisoned_task_is_dead_lettered_and_work_goes_on(
    open_comm: OpenComm, caplog: pytest.LogCaptureFixture, body: bytes, content_type: str
) -> None:
    seen: list[Any] = []

    async def subscriber(_comm: Any, task: Any) -> Any:
        seen.append(task)
        return task

    async with open_comm() as comm:
        queue = comm._default_queue
        await comm.add_task_subscriber(subscriber)
        await _publish_raw(comm, queue.exchange, queue.name, body, content_type)
        with trio.fail_after(DEADLINE):
            assert await (await comm.task_send("good")) == "good"
            # The bad one sits in the dead-letter queue, intact, for someone to look at.
            dead = None
            while dead is None:
                dead = await comm._ctx.session.get(f"{queue.name}.dead-letter")
                if dead is None:
                    await trio.sleep(0.05)
        assert dead.body == body
        await dead.ack()
        assert seen == ["good"]
        assert any("rejecting task" in r.getMessage() for r in caplog.records
                   if r.levelno >= logging.ERROR)


async def test_poisoned_rpc_and_broadcast_are_rejected(
    open_comm: OpenComm, caplog: pytest.LogCaptureFixture, names: Any
) -> None:
    calls: list[Any] = []
    broadcasts: list[Any] = []
    got_broadcast = trio.Event()

    async def listener(_c: Any, body: Any, *_rest: Any) -> None:
        broadcasts.append(body)
        got_broadcast.set()

    async with open_comm() as comm:
        await comm.add_rpc_subscriber(lambda _c, msg: calls.append(msg) or msg, "target")
        await comm.add_broadcast_subscriber(listener)
        await _publish_raw(comm, "", f"{names.message_exchange}.rpc.target", b"\xff")
        # A well-formed CBOR value that is not a broadcast envelope: wrong structure.
        await _publish_raw(comm, names.message_exchange, "x", kiwitrio.cbor_encode([1, 2]))
        with trio.fail_after(DEADLINE):
            assert await (await comm.rpc_send("target", "ok")) == "ok"
            await comm.broadcast_send("ok")
            await got_broadcast.wait()
    assert calls == ["ok"]
    assert broadcasts == ["ok"]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("RPC to 'target'" in m for m in errors)
    assert any("rejecting broadcast" in m for m in errors)


async def test_undecodable_rpc_gets_an_error_reply_not_a_hang(open_comm: OpenComm) -> None:
    def decode(data: bytes) -> Any:
        value = kiwitrio.cbor_decode(data)
        if value == "poison":
            raise ValueError("refusing poison")
        return value

    async with open_comm(decoder=decode) as comm:
        await comm.add_rpc_subscriber(lambda _c, msg: msg, "picky")
        handle = await comm.rpc_send("picky", "poison")
        with trio.fail_after(DEADLINE), pytest.raises(kiwitrio.RemoteException) as info:
            await handle
    assert info.value.remote_type == "DecodeError"
