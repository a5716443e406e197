"""The backend contract: what kiwitrio relies on of a :class:`kiwitrio.backends.Session`,
checked against RabbitMQ, the in-memory broker and the sqlite one alike, with the same error
types.

Each test runs on each (the ``backend`` fixture); what only the memory broker can show
(synchronous dispatch, its registry of brokers) stays in test_memory_backend.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio

import kiwitrio
from kiwitrio._backends import (
    DEAD_LETTER_EXCHANGE,
    EntityNotFound,
    NegativeAck,
    QueueInUse,
    QueueSpec,
    Session,
)

from .contract import (
    ARRIVAL,
    Backend,
    eventually,
    get_within,
    message,
    nothing_more,
    queue_holds,
    receive,
)

pytestmark = pytest.mark.timeout(60)

# -- routing ----------------------------------------------------------------------------------


async def test_each_exchange_type_routes_as_rabbitmq(backend: Backend, session: Session) -> None:
    direct = await backend.exchange(session, "direct", "direct")
    topic = await backend.exchange(session, "topic", "topic")
    fanout = await backend.exchange(session, "fanout", "fanout")
    queue = await backend.queue(session, "q")
    await session.bind_queue(queue, direct, "exact")
    await session.bind_queue(queue, topic, "jobs.*.done")
    await session.bind_queue(queue, fanout, "ignored")
    routed = [(direct, "exact"), (topic, "jobs.1.done"), (fanout, "anything"), ("", queue)]
    for exchange, key in [*routed, (direct, "other"), (topic, "jobs.done")]:
        await session.publish(exchange, key, message(f"{exchange}/{key}".encode()),
                              mandatory=False)
    got = [(await get_within(session, queue)).body for _ in routed]
    assert got == [f"{exchange}/{key}".encode() for exchange, key in routed]
    assert await session.get(queue) is None


async def test_unroutable_mandatory_publish_and_missing_exchange(session: Session,
                                                                  backend: Backend) -> None:
    exchange = await backend.exchange(session, "lonely")
    with pytest.raises(kiwitrio.UnroutableError):
        await session.publish(exchange, "nobody", message(), mandatory=True)
    await session.publish(exchange, "nobody", message(), mandatory=False)  # dropped quietly
    with pytest.raises(EntityNotFound):
        await session.publish(backend.name("missing"), "k", message(), mandatory=True)
    # The session is still usable after the refusal.
    queue = await backend.queue(session, "after")
    await session.publish("", queue, message(b"fine"), mandatory=True)
    assert (await get_within(session, queue)).body == b"fine"


async def test_binding_to_a_missing_queue_or_exchange_is_entity_not_found(
        session: Session, backend: Backend) -> None:
    exchange = await backend.exchange(session, "x")
    queue = await backend.queue(session, "q")
    with pytest.raises(EntityNotFound):
        await session.bind_queue(backend.name("missing"), exchange, "k")
    with pytest.raises(EntityNotFound):
        await session.bind_queue(queue, backend.name("missing"), "k")


async def test_auto_delete_exchange_goes_with_its_last_binding(session: Session,
                                                               backend: Backend) -> None:
    exchange = await backend.exchange(session, "passing", auto_delete=True)
    queue = await backend.queue(session, "q")
    await session.bind_queue(queue, exchange, "k")
    await session.unbind_queue(queue, exchange, "k")
    with pytest.raises(EntityNotFound):
        await session.publish(exchange, "k", message(), mandatory=False)


async def test_deleting_an_exchange_in_use_is_refused_with_if_unused(
        session: Session, backend: Backend) -> None:
    exchange = await backend.exchange(session, "bound")
    queue = await backend.queue(session, "q")
    await session.bind_queue(queue, exchange, "k")
    with pytest.raises(kiwitrio.DeliveryFailed, match="in use"):
        await session.delete_exchange(exchange, if_unused=True)
    await session.delete_exchange(exchange)
    with pytest.raises(EntityNotFound):
        await session.publish(exchange, "k", message(), mandatory=False)


# -- queues -----------------------------------------------------------------------------------


async def test_redeclaring_a_queue_differently_is_a_declaration_mismatch(
        session: Session, backend: Backend) -> None:
    queue = await backend.queue(session, "q", durable=True,
                                arguments={DEAD_LETTER_EXCHANGE: "dlx"})
    assert await session.declare_queue(QueueSpec(
        queue, durable=True, arguments={DEAD_LETTER_EXCHANGE: "dlx"})) == queue
    with pytest.raises(kiwitrio.DeclarationMismatch):
        await session.declare_queue(QueueSpec(queue, durable=True))
    with pytest.raises(kiwitrio.DeclarationMismatch):
        await session.declare_queue(QueueSpec(queue, durable=False,
                                              arguments={DEAD_LETTER_EXCHANGE: "dlx"}))


async def test_inspect_purge_and_delete(session: Session, backend: Backend) -> None:
    queue = await backend.queue(session, "q")
    assert await session.inspect_queue(backend.name("missing")) is None
    for body in (b"1", b"2", b"3"):
        await session.publish("", queue, message(body), mandatory=True)
    stats = await session.inspect_queue(queue)
    assert stats is not None and (stats.messages, stats.consumers) == (3, 0)
    assert await session.purge_queue(queue) == 3
    with pytest.raises(EntityNotFound):
        await session.purge_queue(backend.name("missing"))
    await session.publish("", queue, message(), mandatory=True)
    consumer = await session.consume(queue, prefetch_count=1)
    taken = await receive(consumer)
    with pytest.raises(kiwitrio.InUseError):
        await session.delete_queue(queue, if_unused=True)
    await taken.reject(requeue=True)
    await consumer.cancel()
    await session.publish("", queue, message(), mandatory=True)
    # The delivered one went back: two messages go with the queue.
    await queue_holds(session, queue, 2)
    assert await session.delete_queue(queue) == 2
    assert await session.inspect_queue(queue) is None
    assert await session.delete_queue(queue) == 0  # idempotent


async def test_get_leaves_the_message_unsettled_until_acked_or_rejected(
        session: Session, backend: Backend) -> None:
    queue = await backend.queue(session, "q")
    assert await session.get(queue) is None
    await session.publish("", queue, message(b"1", correlation_id="c", reply_to="r",
                                             headers={"h": "v"}), mandatory=True)
    first = await get_within(session, queue)
    assert (first.body, first.correlation_id, first.reply_to, first.headers.get("h"),
            first.redelivered, first.settled) == (b"1", "c", "r", "v", False, False)
    assert await session.get(queue) is None  # held by us
    await first.reject(requeue=True)
    again = await get_within(session, queue)
    assert again.body == b"1" and again.redelivered
    await again.ack()
    await again.ack()  # settling twice is a no-op
    assert again.settled
    assert await session.get(queue) is None


# -- consumers --------------------------------------------------------------------------------


async def test_prefetch_bounds_what_a_consumer_holds(session: Session, backend: Backend) -> None:
    queue = await backend.queue(session, "q")
    consumer = await session.consume(queue, prefetch_count=2)
    for body in (b"1", b"2", b"3"):
        await session.publish("", queue, message(body), mandatory=True)
    first, second = await receive(consumer), await receive(consumer)
    assert (first.body, second.body) == (b"1", b"2")
    await nothing_more(consumer)
    await first.ack()
    assert (await receive(consumer)).body == b"3"
    await consumer.cancel()


async def test_cancel_gives_back_what_was_not_taken(session: Session, backend: Backend) -> None:
    queue = await backend.queue(session, "q")
    consumer = await session.consume(queue, prefetch_count=3)
    for body in (b"1", b"2", b"3"):
        await session.publish("", queue, message(body), mandatory=True)
    taken = await receive(consumer)
    await queue_holds(session, queue, 0)  # the other two reached the buffer
    await consumer.cancel()
    # Taken stays ours to settle; the two buffered ones went back to the queue.
    back = [await get_within(session, queue) for _ in range(2)]
    assert sorted(d.body for d in back) == [b"2", b"3"]
    await taken.ack()
    for delivery in back:
        await delivery.ack()


async def test_a_deleted_queue_ends_its_consumers(session: Session, backend: Backend) -> None:
    queue = await backend.queue(session, "q")
    consumer = await session.consume(queue, prefetch_count=1)
    await session.delete_queue(queue)
    with trio.fail_after(ARRIVAL), pytest.raises(trio.EndOfChannel):
        await consumer.deliveries.receive()


async def test_a_closed_session_gives_its_deliveries_to_another(backend: Backend) -> None:
    async with backend.open() as survivor:
        queue = await backend.queue(survivor, "q")
        async with backend.open() as doomed:
            held = await doomed.consume(queue, prefetch_count=1)
            await survivor.publish("", queue, message(b"work"), mandatory=True)
            assert (await receive(held)).body == b"work"
            waiting = await survivor.consume(queue, prefetch_count=1)
        again = await receive(waiting)
        assert again.body == b"work" and again.redelivered
        await again.ack()
        await waiting.cancel()


# -- dead letters and expiry --------------------------------------------------------------------


async def test_rejected_and_expired_messages_are_dead_lettered_with_x_death(
        session: Session, backend: Backend) -> None:
    dlx = await backend.exchange(session, "dlx", "fanout")
    dead = await backend.queue(session, "dead")
    await session.bind_queue(dead, dlx, "")
    queue = await backend.queue(session, "q", arguments={DEAD_LETTER_EXCHANGE: dlx})
    await session.publish("", queue, message(b"refused"), mandatory=True)
    await (await get_within(session, queue)).reject(requeue=False)
    await session.publish("", queue, message(b"stale", expiration_ms=1), mandatory=True)

    refused, stale = await get_within(session, dead), await get_within(session, dead)
    assert [(d.body, d.headers["x-death"][0]["reason"], d.headers["x-death"][0]["queue"])
            for d in (refused, stale)] == [(b"refused", "rejected", queue),
                                           (b"stale", "expired", queue)]
    assert refused.headers["x-death"][0]["count"] == 1
    # Without a dead-letter exchange a rejected message is dropped.
    plain = await backend.queue(session, "plain")
    await session.publish("", plain, message(), mandatory=True)
    await (await get_within(session, plain)).reject(requeue=False)
    assert await session.get(plain) is None


# -- exclusive queues and consumers ---------------------------------------------------------------


async def test_an_exclusive_queue_is_its_sessions_alone(backend: Backend, session: Session) -> None:
    async with backend.open() as owner:
        mine = await backend.queue(owner, "mine", exclusive=True)
        with pytest.raises(QueueInUse):
            await session.declare_queue(QueueSpec(mine, exclusive=True))
        with pytest.raises(QueueInUse):
            await session.consume(mine, prefetch_count=1)
        # Others may still publish to it.
        await session.publish("", mine, message(b"hi"), mandatory=True)
        assert (await get_within(owner, mine)).body == b"hi"
    # Closing the owner deleted it. (RabbitMQ 4 deletes it a moment after the close, and
    # nacks what is routed to it meanwhile: a NegativeAck, not yet the answer.)

    async def unroutable() -> bool | None:
        try:
            await session.publish("", mine, message(), mandatory=True)
        except kiwitrio.UnroutableError:
            return True
        except NegativeAck:
            return None
        raise AssertionError("a publish to the closed owner's queue was accepted")

    await eventually(unroutable)


async def test_an_exclusive_consumer_is_the_only_one(backend: Backend, session: Session) -> None:
    queue = await backend.queue(session, "replies")
    async with backend.open() as other:
        only = await session.consume(queue, prefetch_count=1, exclusive=True)
        for exclusive in (False, True):
            with pytest.raises(kiwitrio.DeliveryFailed, match="exclusive"):
                await other.consume(queue, prefetch_count=1, exclusive=exclusive)
        await only.cancel()
        shared = await other.consume(queue, prefetch_count=1)
        with pytest.raises(kiwitrio.DeliveryFailed, match="exclusive"):
            await session.consume(queue, prefetch_count=1, exclusive=True)
        await shared.cancel()


async def test_calls_after_close_raise_communicator_closed(backend: Backend) -> None:
    async with backend.open() as closing:
        queue = await backend.queue(closing, "q")
    with pytest.raises(kiwitrio.CommunicatorClosed):
        await closing.publish("", queue, message(), mandatory=True)
    with pytest.raises(kiwitrio.CommunicatorClosed):
        await closing.declare_queue(QueueSpec(queue))


# -- queue expiry (x-expires: testing mode's queues, lease queues) -------------------------------


async def test_an_unused_queue_expires_and_a_used_one_does_not(session: Session,
                                                               backend: Backend) -> None:
    unused = await backend.queue(session, "unused", arguments={"x-expires": 300})
    consumed = await backend.queue(session, "consumed", arguments={"x-expires": 300})
    consumer = await session.consume(consumed, prefetch_count=1)

    def gone(queue: str) -> Callable[[], Awaitable[bool | None]]:
        # Asked by publishing: a passive declare (inspect_queue) would count as a use, and
        # keep the queue alive, on RabbitMQ as in memory.
        async def check() -> bool | None:
            try:
                await session.publish("", queue, message(), mandatory=True)
            except kiwitrio.UnroutableError:
                return True
            return None

        return check

    await eventually(gone(unused))
    # Consumed all along: still there, well past its expiry time.
    assert await session.inspect_queue(consumed) is not None
    await consumer.cancel()
    await eventually(gone(consumed))  # unused since its consumer left


# -- length limits ----------------------------------------------------------------------------


async def test_a_full_reject_publish_queue_nacks_the_publish(session: Session,
                                                             backend: Backend) -> None:
    """``x-max-length`` with ``x-overflow: reject-publish`` (the task queue catalogue's): a
    publish beyond the limit is nacked and not stored there; other queues it routes to take
    it. Only ready messages count: one delivered and not yet settled makes room."""
    limited = await backend.queue(session, "limited", arguments={
        "x-max-length": 2, "x-overflow": "reject-publish"})
    other = await backend.queue(session, "other")
    fanout = await backend.exchange(session, "fan", "fanout")
    for queue in (limited, other):
        await session.bind_queue(queue, fanout, "")
    for body in (b"1", b"2"):
        await session.publish(fanout, "", message(body), mandatory=True)
    with pytest.raises(NegativeAck):
        await session.publish(fanout, "", message(b"3"), mandatory=True)
    with pytest.raises(NegativeAck):
        await session.publish("", limited, message(b"3 again"), mandatory=True)
    await queue_holds(session, limited, 2)
    await queue_holds(session, other, 3)
    held = await get_within(session, limited)
    await session.publish("", limited, message(b"4"), mandatory=True)  # 1 ready, 1 held
    await held.ack()
    got = [(await get_within(session, limited)).body for _ in range(2)]
    assert got == [b"2", b"4"]
