"""inspect and ping: every communicator answers the control exchange (both backends)."""

from __future__ import annotations

import math
import os
import socket
from typing import Any

import pytest
import trio

import kiwitrio
from kiwitrio._backends import OutgoingMessage
from kiwitrio._kinds._control import ControlError, control_exchange_name, parse_info
from kiwitrio.backends import open_session

from .conftest import Names, OpenComm

DEADLINE = 30
#: How long an inspect collects answers in these tests: generous, the machine is shared.
COLLECT = 2.0
LEASE = 0.3


async def _until(condition: Any, poll: Any) -> Any:
    """Call ``poll()`` until ``condition(result)``; the last result (fails at DEADLINE)."""
    with trio.fail_after(DEADLINE):
        while True:
            result = await poll()
            if condition(result):
                return result
            await trio.sleep(0.05)


async def test_inspect_shows_rpc_subscribers_queues_and_tasks_in_flight(
        open_comm: OpenComm, names: Names) -> None:
    started = trio.Event()

    async def stuck(_comm: Any, _task: Any) -> None:
        started.set()
        await trio.sleep_forever()

    async with open_comm() as worker, open_comm() as asker:
        await worker.add_rpc_subscriber(lambda _c, msg: msg, "proc-42")
        await worker.add_task_subscriber(stuck)
        handle = await asker.task_send("job")
        with trio.fail_after(DEADLINE):
            await started.wait()
        infos = await asker.inspect(timeout=COLLECT)
    [info] = infos  # the asker does not list itself
    assert isinstance(info, kiwitrio.CommunicatorInfo)
    assert info.identity == worker.identity != asker.identity
    assert (info.host, info.pid) == (socket.gethostname(), os.getpid())
    assert info.rpc_subscribers == ("proc-42",)
    assert info.task_queues == (names.task_queue,)
    [task] = info.in_flight
    assert task.queue == names.task_queue
    assert task.task_id == handle.correlation_id
    assert task.age >= 0 and not task.leased
    assert info.as_dict()["in_flight"][0]["task_id"] == handle.correlation_id


async def test_inspect_says_when_a_task_is_on_a_lease(open_comm: OpenComm) -> None:
    started = trio.Event()

    async def long_task(_comm: Any, _task: Any) -> None:
        started.set()
        await trio.sleep_forever()

    async with open_comm(task_lease=LEASE) as worker, open_comm() as asker:
        await worker.add_task_subscriber(long_task)
        await asker.task_send("long", no_reply=True)
        with trio.fail_after(DEADLINE):
            await started.wait()
        infos = await _until(
            lambda infos: len(infos) == 1 and infos[0].in_flight[0].leased,
            lambda: asker.inspect(timeout=COLLECT))
    [task] = infos[0].in_flight
    # Sent with no_reply: no correlation id, but an id of its own all the same.
    assert len(task.task_id) == 32 and not task.task_id.startswith("no-reply-")


async def test_pulled_tasks_are_in_flight_too(open_comm: OpenComm, names: Names) -> None:
    async with open_comm() as puller, open_comm() as asker:
        await asker.task_send("pulled", no_reply=True)
        queue = await puller.task_queue(names.task_queue)
        async with queue.next_task(timeout=DEADLINE):  # requeued when the block ends
            [info] = await asker.inspect(timeout=COLLECT)
    assert [t.queue for t in info.in_flight] == [names.task_queue]
    assert info.task_queues == ()  # pulling is not consuming


async def test_ping_answers_each_identity(open_comm: OpenComm) -> None:
    async with open_comm() as one, open_comm() as two, open_comm() as asker:
        identities = await asker.ping(timeout=COLLECT)
    assert identities == sorted([one.identity, two.identity])


async def test_broadcast_subscribers_never_see_control_requests(
        open_comm: OpenComm, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[Any] = []
    arrived = trio.Event()

    async def subscriber(_comm: Any, body: Any, _sender: Any, _subject: Any, _cid: Any) -> None:
        seen.append(body)
        if seen.count("after") == 2:
            arrived.set()

    async with open_comm() as listener, open_comm() as asker:
        # A filter on "*" binds "#": on the message exchange it would get everything.
        await listener.add_broadcast_subscriber(kiwitrio.BroadcastFilter(subscriber, "*"))
        await listener.add_broadcast_subscriber(subscriber)
        assert len(await asker.inspect(timeout=COLLECT)) == 1  # the listener got the request
        await asker.broadcast_send("after", subject="x")
        with trio.fail_after(DEADLINE):
            await arrived.wait()
    assert seen == ["after", "after"]
    # Nor was a control request dropped as a bad broadcast on the way.
    assert not [r for r in caplog.records if "broadcast" in r.getMessage()], caplog.text


@pytest.mark.parametrize("body, content_type", [
    (b"\xff not cbor", kiwitrio.CBOR_CONTENT_TYPE),
    (kiwitrio.cbor_encode(["inspect"]), kiwitrio.CBOR_CONTENT_TYPE),
    (kiwitrio.cbor_encode({"command": "rm -rf"}), kiwitrio.CBOR_CONTENT_TYPE),
    (kiwitrio.cbor_encode({"command": "inspect"}), "text/plain"),
    (kiwitrio.cbor_encode({str(i): i for i in range(100)}), kiwitrio.CBOR_CONTENT_TYPE),
])
async def test_hostile_control_requests_are_dropped_and_the_listener_goes_on(
        open_comm: OpenComm, names: Names, broker_url: str, body: bytes,
        content_type: str, caplog: pytest.LogCaptureFixture) -> None:
    async with open_comm() as target, open_comm() as asker, \
            open_session(broker_url, heartbeat=0) as session:
        await asker.task_send("warm up the reply queue", no_reply=True)
        reply_to, cid, answers = await asker._replies.collect(10)
        message = OutgoingMessage(body, content_type, correlation_id=cid, reply_to=reply_to)
        await session.publish(control_exchange_name(names.message_exchange), "", message,
                              mandatory=False)
        # The hostile request is rejected (logged), not answered; the next one is.
        await _until(lambda records: any("control request" in r.getMessage() for r in records),
                     _records(caplog))
        [info] = await asker.inspect(timeout=COLLECT)
        assert info.identity == target.identity
        asker._replies.stop_collecting(cid)
        assert [answer async for answer in answers] == []


def _records(caplog: pytest.LogCaptureFixture) -> Any:
    async def poll() -> list[Any]:
        return list(caplog.records)
    return poll


GOOD = {"identity": "h:1:x", "host": "h", "pid": 1, "rpc_subscribers": ["a"],
        "task_queues": ["q"], "in_flight": [{"queue": "q", "task_id": "t", "age": 1.5,
                                             "leased": False}]}


def test_a_good_answer_parses() -> None:
    info = parse_info(GOOD)
    assert info.in_flight[0].age == 1.5 and info.as_dict() == GOOD


@pytest.mark.parametrize("change", [
    {"pid": True}, {"pid": -1}, {"pid": 2**70}, {"host": 5}, {"identity": "x" * 10_000},
    {"rpc_subscribers": "a"}, {"rpc_subscribers": ["a"] * 2000}, {"task_queues": [None]},
    {"in_flight": [{"queue": "q", "task_id": "t", "age": math.nan, "leased": False}]},
    {"in_flight": [{"queue": "q", "task_id": "t", "age": 1, "leased": "yes"}]},
    {"in_flight": [["q"]]}, {"in_flight": None},
])
def test_bad_answers_are_refused(change: dict[str, Any]) -> None:
    with pytest.raises(ControlError):
        parse_info({**GOOD, **change})
    assert issubclass(ControlError, kiwitrio.KiwitrioError)


async def test_inspect_refuses_a_bad_timeout(open_comm: OpenComm) -> None:
    async with open_comm() as comm:
        for bad in (0, -1, math.inf, math.nan):
            with pytest.raises(ValueError):
                await comm.inspect(timeout=bad)


async def test_control_shutdown_runs_the_hook_of_the_target_only(open_comm: OpenComm) -> None:
    calls: list[str] = []
    async with open_comm() as worker, open_comm() as plain, open_comm() as asker:
        worker.on_control_shutdown(lambda: calls.append("worker"))
        assert await asker.control_shutdown(timeout=COLLECT) == {
            worker.identity: True, plain.identity: False}
        assert calls == ["worker"]
        assert await asker.control_shutdown(plain.identity, timeout=COLLECT) == {
            plain.identity: False}
        worker.on_control_shutdown(None)
        assert await asker.control_shutdown(worker.identity, timeout=COLLECT) == {
            worker.identity: False}
    assert calls == ["worker"]
