"""Whatever a message holds, it is that message's problem, never the communicator's.

These tests decode with a *permissive* decoder (plain ``cbor2.loads``, no limits), so that
they check the message paths themselves: a value the decoder lets through (here a big
integer whose ``repr()`` raises ValueError, Python's int-to-str digit limit) must not escape
from a broadcast, a reply, a task or RPC result, or a lease queue into the communicator's
nursery. The default decoder's own limits are tested in test_bounded_decoding.py.
"""

from __future__ import annotations

import logging
from typing import Any

import cbor2
import pytest
import trio

import kiwitrio
from kiwitrio._backends import OutgoingMessage
from kiwitrio._saferepr import describe_error, safe_repr, safe_str_of_exception

from .conftest import Names, OpenComm

DEADLINE = 10
CBOR = kiwitrio.CBOR_CONTENT_TYPE
#: 2000 bytes: about 4800 decimal digits, over Python's default int-to-str limit of 4300.
BIGNUM = 1 << (8 * 2000)


def permissive_decode(data: bytes) -> Any:
    return cbor2.loads(data)


def test_bignum_really_cannot_be_printed() -> None:
    # What these tests rely on: repr() raises, so any %r of it in a message path would too.
    with pytest.raises(ValueError, match="digits"):
        repr(BIGNUM)


def test_safe_repr_is_bounded_and_never_raises() -> None:
    assert safe_repr(BIGNUM) == "<int of 16001 bits>"
    assert len(safe_repr(["x" * 10_000] * 10_000)) <= 200
    assert safe_repr({"a": [1, 2.5, None, b"\x00"]}) == "{'a': [1, 2.5, None, b'\\x00']}"
    nested: list[Any] = []
    for _ in range(100_000):  # far deeper than the recursion limit
        nested = [nested]
    assert safe_repr(nested).startswith("[[[[")
    # A graph of shared references with 2**100 leaves: only what is shown is visited.
    graph: list[Any] = [1]
    for _ in range(100):
        graph = [graph, graph]
    assert len(safe_repr(graph)) <= 200
    assert safe_repr(cbor2.CBORTag(99, BIGNUM)) == "CBORTag(99, <int of 16001 bits>)"

    class Hostile:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    assert safe_repr(Hostile()) == "<test_safe_repr_is_bounded_and_never_raises.<locals>." \
        "Hostile object>"
    assert "str() failed" in safe_str_of_exception(KeyError(BIGNUM))
    assert describe_error(ValueError("x" * 1000), 50).startswith("ValueError: xxx")
    assert len(describe_error(ValueError("x" * 1000), 50)) < 70


async def publish_raw(comm: kiwitrio.Communicator, exchange: str, routing_key: str,
                      body: bytes, *, content_type: str = CBOR,
                      correlation_id: str | None = None, reply_to: str | None = None,
                      headers: dict[str, Any] | None = None) -> None:
    message = OutgoingMessage(body, content_type, correlation_id=correlation_id,
                              reply_to=reply_to, headers=headers or {})
    await comm._ctx.session.publish(exchange, routing_key, message, mandatory=False)


BUG = "handling it failed: RuntimeError: a bug nobody"


def error_lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.ERROR and text in r.getMessage()]


async def test_unprintable_broadcast_is_rejected_and_broadcasts_go_on(
    open_comm: OpenComm, names: Names, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[Any] = []
    good = trio.Event()

    async def listener(_c: Any, body: Any, *_rest: Any) -> None:
        seen.append(body)
        if body == "good":
            good.set()

    async with open_comm(decoder=permissive_decode) as comm:
        await comm.add_broadcast_subscriber(listener)
        # The bare bignum where an envelope belongs: its error message used to format it.
        await publish_raw(comm, names.message_exchange, "x", cbor2.dumps(BIGNUM))
        with trio.fail_after(DEADLINE):
            await comm.broadcast_send("good")
            await good.wait()
        assert comm.connection_state is kiwitrio.ConnectionState.CONNECTED
    assert seen == ["good"]
    [line] = error_lines(caplog, "rejecting broadcast")
    assert "<int of 16001 bits>" in line


async def test_unprintable_replies_fail_their_handles_and_routing_goes_on(
    open_comm: OpenComm, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_comm(decoder=permissive_decode) as comm:
        reply_queue, bare = await comm._replies.expect()
        _, odd_exception = await comm._replies.expect()
        _, fine = await comm._replies.expect()
        await publish_raw(comm, "", reply_queue, cbor2.dumps(BIGNUM),
                          correlation_id=bare.correlation_id)
        # An exception envelope whose fields are not text: described, never str()-ed.
        await publish_raw(comm, "", reply_queue, cbor2.dumps(
            {"exception": {"type": BIGNUM, "message": [BIGNUM], "traceback": 7}}),
            correlation_id=odd_exception.correlation_id)
        await publish_raw(comm, "", reply_queue, cbor2.dumps({"result": "fine"}),
                          correlation_id=fine.correlation_id)
        with trio.fail_after(DEADLINE):
            assert await fine == "fine"
            with pytest.raises(kiwitrio.DecodeError, match="not a reply envelope"):
                await bare
            with pytest.raises(kiwitrio.RemoteException) as info:
                await odd_exception
        assert comm.connection_state is kiwitrio.ConnectionState.CONNECTED
    assert info.value.remote_type == "<int of 16001 bits>"
    assert info.value.remote_message == "[<int of 16001 bits>]"
    assert len(error_lines(caplog, "rejecting reply")) == 1


async def test_subscriber_error_that_cannot_be_printed_is_still_answered(
    open_comm: OpenComm, caplog: pytest.LogCaptureFixture
) -> None:
    """A subscriber raising KeyError(task) for a bignum task: str() of that error raises.
    The sender still gets a RemoteException, for a task and for an RPC."""

    def lookup(_comm: Any, key: Any) -> Any:
        return {}[key]

    caplog.set_level(logging.INFO, logger="kiwitrio")
    async with open_comm(decoder=permissive_decode) as comm:
        await comm.add_task_subscriber(lookup)
        await comm.add_rpc_subscriber(lookup, "lookup")
        await comm.add_rpc_subscriber(lambda _c, msg: msg, "echo")
        with trio.fail_after(DEADLINE):
            with pytest.raises(kiwitrio.RemoteException) as task_error:
                await (await comm.task_send(BIGNUM))
            with pytest.raises(kiwitrio.RemoteException) as rpc_error:
                await (await comm.rpc_send("lookup", BIGNUM))
            # And the communicator goes on serving.
            assert await (await comm.rpc_send("echo", "still there?")) == "still there?"
        assert comm.connection_state is kiwitrio.ConnectionState.CONNECTED
    for error in (task_error.value, rpc_error.value):
        assert error.remote_type == "KeyError"
        assert "str() failed" in error.remote_message


async def test_foreign_message_on_a_lease_queue_is_dropped_and_leases_go_on(
    open_comm: OpenComm, caplog: pytest.LogCaptureFixture
) -> None:
    """A lease queue is durable and not exclusive: anyone may publish to it. A message
    without a usable renewal stamp used to crash the lease loop (int() of the header)."""
    release = trio.Event()
    started = trio.Event()

    async def slow(_comm: Any, task: Any) -> Any:
        started.set()
        await release.wait()
        return task

    async with open_comm(task_lease=0.3) as comm:
        await comm.add_task_subscriber(slow)
        handle = await comm.task_send("long")
        keeper = comm._default_queue._lease_keeper
        assert keeper is not None
        with trio.fail_after(DEADLINE):
            await started.wait()
            # No event tells when the task moved onto its lease: poll, within the deadline.
            while not keeper._running:  # noqa: ASYNC110
                await trio.sleep(0.02)
        for headers in ({"kiwitrio-lease-cycle": "not a number"},
                        {"kiwitrio-lease-cycle": 10**9}, {}):
            await publish_raw(comm, "", keeper.name, b"\xff garbage", headers=headers)
        with trio.fail_after(DEADLINE):
            while len(error_lines(caplog, f"on lease queue {keeper.name}")) < 3:  # noqa: ASYNC110
                await trio.sleep(0.05)  # the lease loop runs every 0.1 s
        release.set()
        with trio.fail_after(DEADLINE):
            assert await handle == "long"
            # The finished task's copies go right after its reply: nothing is left behind.
            while (stats := await comm._ctx.session.inspect_queue(keeper.name)) is not None \
                    and stats.messages:  # noqa: ASYNC110 - the broker's state: polled
                await trio.sleep(0.02)
        assert comm.connection_state is kiwitrio.ConnectionState.CONNECTED


async def test_an_unforeseen_error_in_a_handler_dead_letters_that_message_only(
    open_comm: OpenComm, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The last line of defence (Context.guard): whatever goes wrong while handling one task
    or RPC is logged, that message is dead-lettered, and the communicator goes on."""
    import kiwitrio._kinds._rpc
    import kiwitrio._kinds._tasks

    def broken(value: Any) -> dict[str, Any]:
        if value == "boom":
            raise RuntimeError("a bug nobody foresaw")
        return {"result": value}

    monkeypatch.setattr(kiwitrio._kinds._tasks, "result_envelope", broken)
    monkeypatch.setattr(kiwitrio._kinds._rpc, "result_envelope", broken)
    async with open_comm() as comm:
        await comm.add_task_subscriber(lambda _c, task: task)
        await comm.add_rpc_subscriber(lambda _c, msg: msg, "echo")
        await comm.task_send("boom", no_reply=True)
        await comm.rpc_send("echo", "boom")
        with trio.fail_after(DEADLINE):
            assert await (await comm.task_send("fine")) == "fine"
            assert await (await comm.rpc_send("echo", "fine")) == "fine"
            queue = comm._default_queue
            dead = None
            while dead is None:
                dead = await comm._ctx.session.get(f"{queue.name}.dead-letter")
                if dead is None:
                    await trio.sleep(0.05)
            await dead.ack()
            # Handlers run concurrently (the subscribers in threads): the "boom" RPC may still
            # be on its way when the "fine" calls are answered. Wait for its line too.
            while len(error_lines(caplog, BUG)) < 2:  # noqa: ASYNC110 - log records, no event
                await trio.sleep(0.02)
        assert comm.connection_state is kiwitrio.ConnectionState.CONNECTED
    assert cbor2.loads(dead.body) == "boom"
    assert len(error_lines(caplog, BUG)) == 2
