"""Replies are private to their caller: nobody else consumes them, none is accepted unasked.

The trust model these tests check (docs/reliability.md): a reply queue is consumed
exclusively, so another client cannot take replies away from the handles waiting for them;
a reply resolves a handle only if it carries the correlation id of a request this
communicator sent and still waits for, so a forged reply for anything else is dropped, with a
warning. (Whoever can read a request can answer it: that is what workers do.)
"""

from __future__ import annotations

import logging
import uuid

import pytest
import trio

import kiwitrio
from kiwitrio._backends import OutgoingMessage

from .conftest import AMQP_URL, Names, OpenComm
from .tcp_proxy import open_tcp_proxy

DEADLINE = 20
CBOR = kiwitrio.CBOR_CONTENT_TYPE
FAST = kiwitrio.ReconnectPolicy(initial_delay=0.05, max_delay=0.5, jitter=0.05,
                                startup_give_up_after=5.0)


async def test_nobody_else_can_consume_a_reply_queue(open_comm: OpenComm) -> None:
    """A thief that knows the reply queue's name (it is in every request's reply_to) cannot
    consume from it; all 40 results reach their handles."""
    async with open_comm() as caller, open_comm() as worker, open_comm() as thief:
        await worker.add_task_subscriber(lambda _c, task: task * 2)
        reply_queue, _ = await caller._replies.expect()
        with pytest.raises(kiwitrio.DeliveryFailed, match="exclusive"):
            await thief._ctx.session.consume(reply_queue, prefetch_count=20)
        with trio.fail_after(DEADLINE):
            handles = [await caller.task_send(i) for i in range(40)]
            assert [await handle for handle in handles] == [2 * i for i in range(40)]


async def test_a_reply_nobody_asked_for_is_dropped_with_a_warning(
    open_comm: OpenComm, caplog: pytest.LogCaptureFixture
) -> None:
    forged_id = f"forged-{uuid.uuid4().hex}"
    async with open_comm() as caller:
        reply_queue, waiting = await caller._replies.expect()
        for correlation_id in (forged_id, None):
            await caller._ctx.session.publish("", reply_queue, OutgoingMessage(
                kiwitrio.cbor_encode({"result": "forged"}), CBOR,
                correlation_id=correlation_id), mandatory=True)
        # Replies are handled in order: once the genuine one is in, the forged ones were
        # handled (and resolved nothing).
        await caller._ctx.session.publish("", reply_queue, OutgoingMessage(
            kiwitrio.cbor_encode({"result": "genuine"}), CBOR,
            correlation_id=waiting.correlation_id), mandatory=True)
        with trio.fail_after(DEADLINE):
            assert await waiting == "genuine"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                and "did not ask for" in r.getMessage()]
    assert len(warnings) == 2, warnings
    assert any(forged_id in line for line in warnings)


async def test_a_late_reply_to_a_request_of_ours_is_not_a_warning(
    open_comm: OpenComm, caplog: pytest.LogCaptureFixture
) -> None:
    """A duplicate (a task answered twice after a redelivery) or a reply whose handle was
    dropped is expected: DEBUG, not a warning."""
    caplog.set_level(logging.DEBUG, logger="kiwitrio")
    async with open_comm() as caller:
        reply_queue, first = await caller._replies.expect()
        for _ in range(2):
            await caller._ctx.session.publish("", reply_queue, OutgoingMessage(
                kiwitrio.cbor_encode({"result": 1}), CBOR,
                correlation_id=first.correlation_id), mandatory=True)
        _, second = await caller._replies.expect()
        await caller._ctx.session.publish("", reply_queue, OutgoingMessage(
            kiwitrio.cbor_encode({"result": 2}), CBOR,
            correlation_id=second.correlation_id), mandatory=True)
        with trio.fail_after(DEADLINE):
            assert await first == 1
            assert await second == 2
    assert not [r for r in caplog.records if "did not ask for" in r.getMessage()]
    assert any("has no waiter" in r.getMessage() for r in caplog.records)


async def test_reply_queue_is_consumed_exclusively_again_after_a_reconnection(
    names: Names
) -> None:
    reconnected = trio.Event()
    seen: list[kiwitrio.ConnectionState] = []

    def on_state(state: kiwitrio.ConnectionState) -> None:
        seen.append(state)
        if state is kiwitrio.ConnectionState.CONNECTED and len(seen) > 1:
            reconnected.set()

    async with open_tcp_proxy() as proxy, \
            kiwitrio.open_communicator(proxy.url(), **names.kwargs(), reconnect=FAST,
                                       on_connection_state=on_state) as caller, \
            kiwitrio.open_communicator(AMQP_URL, **names.kwargs()) as worker, \
            kiwitrio.open_communicator(AMQP_URL, **names.kwargs()) as thief:
        await worker.add_rpc_subscriber(lambda _c, msg: msg, "echo")
        reply_queue, _ = await caller._replies.expect()
        assert proxy.cut() >= 1
        with trio.fail_after(DEADLINE):
            await reconnected.wait()
            with pytest.raises(kiwitrio.DeliveryFailed, match="exclusive"):
                await thief._ctx.session.consume(reply_queue, prefetch_count=20)
            handle = await caller.rpc_send("echo", "after the cut")
            assert await handle == "after the cut"


def _connection(session: object) -> object:
    """The connection under a reconnecting session (the session itself otherwise)."""
    return getattr(session, "_current", None) or session


async def test_replies_say_who_sent_them(open_comm: OpenComm) -> None:
    """Every publish carries its connection's login as user_id (checked by RabbitMQ)."""
    async with open_comm() as caller, open_comm() as worker:
        await worker.add_rpc_subscriber(lambda _c, msg: msg, identifier="echo")
        await worker.add_task_subscriber(lambda _c, task: task)
        with trio.fail_after(DEADLINE):
            for handle in (await caller.rpc_send("echo", 1), await caller.task_send(2)):
                await handle
                assert handle.replied_by == "guest"


async def test_untrusted_replies_are_dropped_and_the_genuine_one_resolves(
    open_comm: OpenComm, caplog: pytest.LogCaptureFixture
) -> None:
    """With trusted_reply_users, a reply without a trusted user_id (here: none at all, as a
    client that does not set one sends) resolves nothing, though its correlation id is the
    one the caller waits for; the genuine reply, behind it, does."""
    async with open_comm(trusted_reply_users={"guest"}) as caller, open_comm() as forger:
        reply_queue, waiting = await caller._replies.expect()
        forger_connection = _connection(forger._ctx.session)
        forger_connection.login = None  # type: ignore[attr-defined]
        await forger._ctx.session.publish("", reply_queue, OutgoingMessage(
            kiwitrio.cbor_encode({"result": "forged"}), CBOR,
            correlation_id=waiting.correlation_id), mandatory=True)
        forger_connection.login = "guest"  # type: ignore[attr-defined]
        await forger._ctx.session.publish("", reply_queue, OutgoingMessage(
            kiwitrio.cbor_encode({"result": "genuine"}), CBOR,
            correlation_id=waiting.correlation_id), mandatory=True)
        with trio.fail_after(DEADLINE):
            assert await waiting == "genuine"
        assert waiting.replied_by == "guest"
    dropped = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
               and "not in trusted_reply_users" in r.getMessage()]
    assert len(dropped) == 1, dropped
    assert waiting.correlation_id in dropped[0]


async def test_the_broker_refuses_a_user_id_that_is_not_the_publishers() -> None:
    """What makes user_id worth checking: RabbitMQ refuses a message whose user_id is not
    the login of the connection publishing it (the shared broker's guest is no impersonator)."""
    async with kiwitrio.open_communicator(AMQP_URL, reconnect=None) as comm:
        _connection(comm._ctx.session).login = "mallory"  # type: ignore[attr-defined]
        with trio.fail_after(DEADLINE), pytest.raises(kiwitrio.DeliveryFailed,
                                                      match="user_id"):
            await comm._ctx.session.publish("", "amq.rabbitmq.reply-to.nobody", OutgoingMessage(
                b"x", CBOR), mandatory=False)


@pytest.mark.parametrize("users", ["guest", ["guest", 1]])
async def test_trusted_reply_users_must_be_logins(users: object) -> None:
    with pytest.raises(TypeError, match="trusted_reply_users"):
        async with kiwitrio.open_communicator("memory://", trusted_reply_users=users):  # type: ignore[arg-type]
            pass
