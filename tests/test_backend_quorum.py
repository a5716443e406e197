"""The backend contract for quorum queues: what kiwitrio relies on when it declares them
(``queue_type="quorum"``), on RabbitMQ and on the memory broker alike."""

from __future__ import annotations

import pytest

import kiwitrio
from kiwitrio._backends import DEAD_LETTER_EXCHANGE, QueueSpec, Session

from .contract import Backend, get_within, message

pytestmark = pytest.mark.timeout(60)

QUORUM = {"x-queue-type": "quorum"}


async def test_a_quorum_queue_counts_returns_and_dead_letters_past_its_limit(
        session: Session, backend: Backend) -> None:
    dlx = await backend.exchange(session, "dlx", "fanout")
    dead = await backend.queue(session, "dead")
    await session.bind_queue(dead, dlx, "")
    queue = await backend.queue(session, "q", arguments={
        **QUORUM, "x-delivery-limit": 1, DEAD_LETTER_EXCHANGE: dlx})
    await session.publish("", queue, message(b"poison"), mandatory=True)

    seen = []
    for _ in range(2):  # the first delivery and one redelivery are allowed...
        delivery = await get_within(session, queue)
        seen.append((delivery.delivery_count, delivery.redelivered))
        await delivery.reject(requeue=True)
    assert seen == [(0, False), (1, True)]
    # ...then the second return is one too many: dead-lettered, saying why.
    letter = await get_within(session, dead)
    assert letter.body == b"poison"
    assert letter.headers["x-death"][0]["reason"] == "delivery_limit"
    assert await session.get(queue) is None


async def test_a_classic_queue_counts_nothing(session: Session, backend: Backend) -> None:
    queue = await backend.queue(session, "q")
    await session.publish("", queue, message(), mandatory=True)
    await (await get_within(session, queue)).reject(requeue=True)
    again = await get_within(session, queue)
    assert again.redelivered and again.delivery_count == 0
    await again.ack()


@pytest.mark.parametrize("spec", [
    {"exclusive": True, "durable": False},
    {"auto_delete": True},
], ids=["exclusive", "auto-delete"])
async def test_quorum_queues_are_shared_and_kept(session: Session, backend: Backend,
                                                 spec: dict[str, bool]) -> None:
    with pytest.raises(kiwitrio.DeliveryFailed) as refused:
        await backend.queue(session, "q", arguments=QUORUM, **spec)
    assert not isinstance(refused.value, kiwitrio.DeclarationMismatch)
    # The session goes on (on RabbitMQ the refusal closed a channel, not the connection).
    await backend.queue(session, "after")


async def test_a_quorum_queue_needs_a_name(session: Session) -> None:
    with pytest.raises(kiwitrio.DeliveryFailed, match="server-named"):
        await session.declare_queue(QueueSpec(None, durable=True, arguments=QUORUM))


async def test_a_queue_keeps_its_type(session: Session, backend: Backend) -> None:
    untyped = await backend.queue(session, "untyped")
    # A queue declared without a type is a classic one: saying so is equivalent...
    await session.declare_queue(QueueSpec(untyped, durable=True,
                                          arguments={"x-queue-type": "classic"}))
    # ...asking for another type is not, and the error says what exists and what was asked.
    with pytest.raises(kiwitrio.DeclarationMismatch) as as_quorum:
        await session.declare_queue(QueueSpec(untyped, durable=True, arguments=QUORUM))
    assert as_quorum.value.argument == "x-queue-type"
    assert "'quorum' here" in str(as_quorum.value)
    quorum = await backend.queue(session, "quorum", arguments=QUORUM)
    for other in ({}, {"x-queue-type": "classic"}):
        with pytest.raises(kiwitrio.DeclarationMismatch) as mismatch:
            await session.declare_queue(QueueSpec(quorum, durable=True, arguments=other))
        assert mismatch.value.argument == "x-queue-type"
        assert "'quorum' on the broker" in str(mismatch.value)
