"""The in-process broker (:mod:`kiwitrio._backends._memory`) behaves like RabbitMQ for what
kiwitrio uses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

from kiwitrio._backends import (
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_ROUTING_KEY,
    Consumer,
    Delivery,
    OutgoingMessage,
    QueueInUse,
    QueueSpec,
    Session,
)
from kiwitrio._backends._memory import _topic_matches, open_memory_session
from kiwitrio._errors import CommunicatorClosed, DeliveryFailed, UnroutableError

URL = "memory://test"


def message(body: bytes = b"x", **kwargs: Any) -> OutgoingMessage:
    return OutgoingMessage(body=body, content_type="text/plain", **kwargs)


@pytest.fixture
async def session() -> AsyncIterator[Session]:
    async with open_memory_session(URL) as opened:
        yield opened


async def receive(consumer: Consumer) -> Delivery:
    with trio.fail_after(1):
        return await consumer.deliveries.receive()


def buffered_bodies(consumer: Consumer) -> list[bytes]:
    """Everything the consumer's channel holds right now (dispatch is synchronous)."""
    bodies = []
    while True:
        try:
            bodies.append(consumer.deliveries.receive_nowait().body)
        except trio.WouldBlock:
            return bodies


async def drain(session: Session, queue: str) -> list[Delivery]:
    """Take every message left in ``queue`` with ``get`` (unsettled)."""
    taken = []
    while (delivery := await session.get(queue)) is not None:
        taken.append(delivery)
    return taken


async def bodies_in(session: Session, queue: str) -> list[bytes]:
    """The bodies left in ``queue``, acking them."""
    deliveries = await drain(session, queue)
    for delivery in deliveries:
        await delivery.ack()
    return [delivery.body for delivery in deliveries]


async def declare(session: Session, name: str | None, **kwargs: Any) -> str:
    return await session.declare_queue(QueueSpec(name, **kwargs))


# --- Sessions and brokers --------------------------------------------------------------------


async def test_server_properties(session: Session) -> None:
    assert session.server_properties["product"] == "kiwitrio-memory"
    assert isinstance(session.server_properties["version"], str)


async def test_same_url_shares_a_broker_other_urls_do_not() -> None:
    with trio.fail_after(5):
        async with (
            open_memory_session("memory://a") as first,
            open_memory_session("memory://a/") as same,
            open_memory_session("memory://b") as other,
        ):
            await declare(first, "q")
            await first.publish("", "q", message(b"1"), mandatory=True)
            assert await bodies_in(same, "q") == [b"1"]
            with pytest.raises(UnroutableError):
                await other.publish("", "q", message(), mandatory=True)


def test_separate_trio_runs_do_not_share_brokers() -> None:
    async def publish() -> None:
        async with open_memory_session("memory://shared") as session:
            await declare(session, "q", durable=True)
            await session.publish("", "q", message(b"left behind"), mandatory=True)

    async def look() -> bool:
        async with open_memory_session("memory://shared") as session:
            try:
                await session.publish("", "q", message(), mandatory=True)
            except UnroutableError:
                return False
            return True

    trio.run(publish)
    assert trio.run(look) is False


async def test_rejects_other_url_schemes() -> None:
    with pytest.raises(ValueError, match="memory://"):
        async with open_memory_session("amqp://localhost"):
            pass  # pragma: no cover


# --- Exchanges and routing -------------------------------------------------------------------


async def test_default_exchange_routes_to_queue_named_by_key(session: Session) -> None:
    await declare(session, "alpha")
    await declare(session, "beta")
    await session.publish("", "beta", message(b"b"), mandatory=True)
    assert await bodies_in(session, "alpha") == []
    delivery = await session.get("beta")
    assert delivery is not None
    assert (delivery.body, delivery.exchange, delivery.routing_key) == (b"b", "", "beta")
    assert delivery.content_type == "text/plain"


async def test_direct_exchange_matches_exact_key(session: Session) -> None:
    await session.declare_exchange("d", "direct", durable=False, auto_delete=False)
    await declare(session, "q")
    await session.bind_queue("q", "d", "a.b")
    await session.publish("d", "a.b", message(b"hit"), mandatory=True)
    await session.publish("d", "a.*", message(b"miss"), mandatory=False)
    await session.publish("d", "a", message(b"miss"), mandatory=False)
    assert await bodies_in(session, "q") == [b"hit"]


async def test_topic_exchange_wildcards(session: Session) -> None:
    await session.declare_exchange("t", "topic", durable=False, auto_delete=False)
    bindings = {"star": "a.*", "hash": "a.#", "everything": "#", "exact": "a.b"}
    for queue, key in bindings.items():
        await declare(session, queue)
        await session.bind_queue(queue, "t", key)
    for key in ["a", "a.b", "a.b.c", "b", ""]:
        await session.publish("t", key, message(key.encode()), mandatory=True)
    assert await bodies_in(session, "star") == [b"a.b"]
    assert await bodies_in(session, "hash") == [b"a", b"a.b", b"a.b.c"]
    assert await bodies_in(session, "everything") == [b"a", b"a.b", b"a.b.c", b"b", b""]
    assert await bodies_in(session, "exact") == [b"a.b"]


@pytest.mark.parametrize(
    ("binding", "key", "expected"),
    [
        ("a.b", "a.b", True),
        ("a.b", "a.b.c", False),
        ("*", "a", True),
        ("*", "a.b", False),
        ("*", "", False),
        ("#", "", True),
        ("#", "a.b.c", True),
        ("a.#", "a", True),
        ("a.#", "ab", False),
        ("#.c", "a.b.c", True),
        ("#.c", "c", True),
        ("#.c", "c.d", False),
        ("a.*.c", "a.b.c", True),
        ("a.*.c", "a.c", False),
        ("a.#.c", "a.c", True),
        ("a.#.c", "a.x.y.c", True),
        ("a.#.c", "a.x.y.d", False),
        ("#.#", "a", True),
        ("#.*", "", False),
        ("*.#", "a", True),
        ("*.*", ".", True),
        ("", "", True),
        ("", "a", False),
    ],
)
def test_topic_matching_rules(binding: str, key: str, expected: bool) -> None:
    assert _topic_matches(binding, key) is expected


async def test_fanout_exchange_ignores_keys(session: Session) -> None:
    await session.declare_exchange("f", "fanout", durable=False, auto_delete=False)
    for queue in ["q1", "q2"]:
        await declare(session, queue)
        await session.bind_queue(queue, "f", f"ignored-{queue}")
    await session.publish("f", "anything", message(b"m"), mandatory=True)
    assert await bodies_in(session, "q1") == [b"m"]
    assert await bodies_in(session, "q2") == [b"m"]


async def test_one_copy_per_queue_however_many_bindings_match(session: Session) -> None:
    await session.declare_exchange("t", "topic", durable=False, auto_delete=False)
    await declare(session, "q")
    for key in ["a.*", "a.b", "#"]:
        await session.bind_queue("q", "t", key)
    await session.publish("t", "a.b", message(b"once"), mandatory=True)
    assert await bodies_in(session, "q") == [b"once"]


async def test_mandatory_unroutable_raises(session: Session) -> None:
    await session.declare_exchange("d", "direct", durable=False, auto_delete=False)
    with pytest.raises(UnroutableError):
        await session.publish("d", "nobody", message(), mandatory=True)
    with pytest.raises(UnroutableError):
        await session.publish("", "no-such-queue", message(), mandatory=True)
    # Not mandatory: silently dropped.
    await session.publish("d", "nobody", message(), mandatory=False)


async def test_publish_to_missing_exchange_fails(session: Session) -> None:
    with pytest.raises(DeliveryFailed):
        await session.publish("missing", "k", message(), mandatory=False)


async def test_exchange_redeclaration(session: Session) -> None:
    await session.declare_exchange("x", "direct", durable=True, auto_delete=False)
    await session.declare_exchange("x", "direct", durable=True, auto_delete=False)
    with pytest.raises(DeliveryFailed):
        await session.declare_exchange("x", "topic", durable=True, auto_delete=False)
    with pytest.raises(DeliveryFailed):
        await session.declare_exchange("", "direct", durable=True, auto_delete=False)


async def test_auto_delete_exchange_goes_with_its_last_binding(session: Session) -> None:
    await session.declare_exchange("x", "direct", durable=False, auto_delete=True)
    await declare(session, "q")
    # Never bound: still there.
    await session.publish("x", "k", message(), mandatory=False)
    await session.bind_queue("q", "x", "k1")
    await session.bind_queue("q", "x", "k2")
    await session.unbind_queue("q", "x", "k1")
    await session.publish("x", "k2", message(), mandatory=True)
    await session.unbind_queue("q", "x", "k2")
    with pytest.raises(DeliveryFailed):
        await session.publish("x", "k2", message(), mandatory=False)


async def test_deleted_exchange_is_gone(session: Session) -> None:
    await session.declare_exchange("x", "fanout", durable=False, auto_delete=False)
    await declare(session, "q")
    await session.bind_queue("q", "x", "")
    await session.delete_exchange("x")
    with pytest.raises(DeliveryFailed):
        await session.publish("x", "", message(), mandatory=False)
    await session.delete_exchange("x")  # idempotent


async def test_binding_needs_queue_and_exchange(session: Session) -> None:
    await session.declare_exchange("x", "direct", durable=False, auto_delete=False)
    await declare(session, "q")
    with pytest.raises(DeliveryFailed):
        await session.bind_queue("missing", "x", "k")
    with pytest.raises(DeliveryFailed):
        await session.bind_queue("q", "missing", "k")
    with pytest.raises(DeliveryFailed):
        await session.bind_queue("q", "", "k")


# --- Queues ----------------------------------------------------------------------------------


async def test_server_named_queues_are_unique(session: Session) -> None:
    first = await declare(session, None)
    second = await declare(session, None)
    assert first.startswith("amq.gen-")
    assert first != second
    # As RabbitMQ: the amq. prefix is reserved, even to redeclare a server-named queue.
    with pytest.raises(DeliveryFailed):
        await declare(session, first)


async def test_queue_redeclaration_must_be_equivalent(session: Session) -> None:
    args = {DEAD_LETTER_EXCHANGE: "dlx"}
    assert await declare(session, "q", durable=True, arguments=args) == "q"
    assert await declare(session, "q", durable=True, arguments=dict(args)) == "q"
    inequivalent: list[dict[str, Any]] = [
        {"durable": False, "arguments": args},
        {"durable": True, "auto_delete": True, "arguments": args},
        {"durable": True, "exclusive": True, "arguments": args},
        {"durable": True},
    ]
    for different in inequivalent:
        with pytest.raises(DeliveryFailed):
            await declare(session, "q", **different)


async def test_get_returns_unsettled_head_or_none(session: Session) -> None:
    await declare(session, "q")
    assert await session.get("q") is None
    await session.publish("", "q", message(b"1", correlation_id="c", reply_to="r"), mandatory=True)
    await session.publish("", "q", message(b"2", headers={"h": 1}), mandatory=True)
    first = await session.get("q")
    assert first is not None
    assert (first.body, first.correlation_id, first.reply_to) == (b"1", "c", "r")
    assert not first.settled
    assert not first.redelivered
    second = await session.get("q")
    assert second is not None
    assert (second.body, dict(second.headers)) == (b"2", {"h": 1})
    assert await session.get("q") is None
    await first.reject(requeue=True)
    assert first.settled
    again = await session.get("q")
    assert again is not None
    assert (again.body, again.redelivered) == (b"1", True)
    with pytest.raises(DeliveryFailed):
        await session.get("missing")


async def test_delete_queue_ends_consumers_and_drops_messages(session: Session) -> None:
    await declare(session, "q")
    consumer = await session.consume("q", prefetch_count=1)
    for body in [b"1", b"2"]:
        await session.publish("", "q", message(body), mandatory=True)
    await session.delete_queue("q")
    # Already handed over before the delete: still received; then the channel ends.
    assert (await receive(consumer)).body == b"1"
    with pytest.raises(trio.EndOfChannel):
        await receive(consumer)
    await declare(session, "q")
    assert await bodies_in(session, "q") == []
    await session.delete_queue("q")
    await session.delete_queue("q")  # idempotent


# --- Consumers -------------------------------------------------------------------------------


async def test_prefetch_limit_is_respected(session: Session) -> None:
    await declare(session, "q")
    consumer = await session.consume("q", prefetch_count=2)
    for body in [b"1", b"2", b"3"]:
        await session.publish("", "q", message(body), mandatory=True)
    first, second = await receive(consumer), await receive(consumer)
    assert [first.body, second.body] == [b"1", b"2"]
    assert buffered_bodies(consumer) == []
    await first.ack()
    assert buffered_bodies(consumer) == [b"3"]


async def test_prefetch_count_must_be_positive(session: Session) -> None:
    await declare(session, "q")
    with pytest.raises(ValueError, match="prefetch"):
        await session.consume("q", prefetch_count=0)


async def test_round_robin_between_consumers(session: Session) -> None:
    await declare(session, "q")
    one = await session.consume("q", prefetch_count=10)
    two = await session.consume("q", prefetch_count=10)
    for body in [b"1", b"2", b"3", b"4", b"5"]:
        await session.publish("", "q", message(body), mandatory=True)
    assert buffered_bodies(one) == [b"1", b"3", b"5"]
    assert buffered_bodies(two) == [b"2", b"4"]


async def test_full_consumer_is_skipped(session: Session) -> None:
    await declare(session, "q")
    small = await session.consume("q", prefetch_count=1)
    large = await session.consume("q", prefetch_count=10)
    for body in [b"1", b"2", b"3"]:
        await session.publish("", "q", message(body), mandatory=True)
    assert buffered_bodies(small) == [b"1"]
    assert buffered_bodies(large) == [b"2", b"3"]


async def test_reject_requeue_redelivers_at_head(session: Session) -> None:
    await declare(session, "q")
    for body in [b"1", b"2"]:
        await session.publish("", "q", message(body), mandatory=True)
    consumer = await session.consume("q", prefetch_count=1)
    delivery = await receive(consumer)
    assert (delivery.body, delivery.redelivered) == (b"1", False)
    await delivery.reject(requeue=True)
    again = await receive(consumer)
    assert (again.body, again.redelivered) == (b"1", True)
    await again.ack()
    last = await receive(consumer)
    assert (last.body, last.redelivered) == (b"2", False)


async def test_settling_twice_is_a_no_op(session: Session) -> None:
    await declare(session, "q")
    await session.publish("", "q", message(), mandatory=True)
    delivery = await session.get("q")
    assert delivery is not None
    await delivery.ack()
    await delivery.ack()
    await delivery.reject(requeue=True)
    assert delivery.settled
    assert await session.get("q") is None


async def test_cancel_requeues_buffered_deliveries(session: Session) -> None:
    await declare(session, "q")
    consumer = await session.consume("q", prefetch_count=3)
    for body in [b"1", b"2", b"3", b"4"]:
        await session.publish("", "q", message(body), mandatory=True)
    taken = await receive(consumer)
    await consumer.cancel()
    with pytest.raises(trio.EndOfChannel):
        await receive(consumer)
    left = await drain(session, "q")
    assert [(d.body, d.redelivered) for d in left] == [
        (b"2", True),
        (b"3", True),
        (b"4", False),
    ]
    # The delivery already taken is still ours to settle, and is not requeued.
    assert not taken.settled
    await taken.ack()
    await consumer.cancel()  # idempotent


async def test_cancelled_consumer_gets_nothing_more(session: Session) -> None:
    await declare(session, "q")
    stopped = await session.consume("q", prefetch_count=5)
    running = await session.consume("q", prefetch_count=5)
    await stopped.cancel()
    await session.publish("", "q", message(b"1"), mandatory=True)
    assert buffered_bodies(running) == [b"1"]


async def test_auto_delete_queue_goes_with_its_last_consumer(session: Session) -> None:
    await declare(session, "q", auto_delete=True)
    # No consumer yet: the queue stays.
    await session.publish("", "q", message(), mandatory=True)
    first = await session.consume("q", prefetch_count=1)
    second = await session.consume("q", prefetch_count=1)
    await first.cancel()
    await session.publish("", "q", message(), mandatory=True)
    await second.cancel()
    with pytest.raises(UnroutableError):
        await session.publish("", "q", message(), mandatory=True)
    with pytest.raises(DeliveryFailed):
        await session.get("q")


# --- Dead-lettering and expiry ---------------------------------------------------------------


async def test_reject_dead_letters_with_x_death(session: Session) -> None:
    await session.declare_exchange("dlx", "direct", durable=False, auto_delete=False)
    await declare(session, "dead")
    await session.bind_queue("dead", "dlx", "dead-key")
    args = {DEAD_LETTER_EXCHANGE: "dlx", DEAD_LETTER_ROUTING_KEY: "dead-key"}
    await declare(session, "work", arguments=args)
    await session.publish("", "work", message(b"m", headers={"keep": "me"}), mandatory=True)
    delivery = await session.get("work")
    assert delivery is not None
    await delivery.reject(requeue=False)
    assert await session.get("work") is None
    letter = await session.get("dead")
    assert letter is not None
    assert (letter.body, letter.exchange, letter.routing_key) == (b"m", "dlx", "dead-key")
    assert letter.headers["keep"] == "me"
    assert letter.headers["x-death"] == [
        {
            "queue": "work",
            "reason": "rejected",
            "exchange": "",
            "routing-keys": ["work"],
            "count": 1,
        }
    ]
    assert letter.headers["x-first-death-queue"] == "work"


async def test_dead_letter_keeps_key_and_counts_repeated_deaths(session: Session) -> None:
    # "work" dead-letters to "retry" (same routing key); "retry" dead-letters back to "work".
    await session.declare_exchange("to-retry", "fanout", durable=False, auto_delete=False)
    await session.declare_exchange("to-work", "topic", durable=False, auto_delete=False)
    await declare(session, "work", arguments={DEAD_LETTER_EXCHANGE: "to-retry"})
    await declare(session, "retry", arguments={DEAD_LETTER_EXCHANGE: "to-work"})
    await session.bind_queue("retry", "to-retry", "")
    await session.bind_queue("work", "to-work", "#")
    await session.publish("", "work", message(b"m"), mandatory=True)
    for queue in ["work", "retry", "work"]:
        delivery = await session.get(queue)
        assert delivery is not None
        assert delivery.routing_key == "work"
        await delivery.reject(requeue=False)
    letter = await session.get("retry")
    assert letter is not None
    deaths = letter.headers["x-death"]
    assert [(d["queue"], d["count"]) for d in deaths] == [("work", 2), ("retry", 1)]


async def test_reject_without_dead_letter_exchange_drops(session: Session) -> None:
    await declare(session, "q")
    await session.publish("", "q", message(), mandatory=True)
    delivery = await session.get("q")
    assert delivery is not None
    await delivery.reject(requeue=False)
    assert await session.get("q") is None


async def test_expired_messages_are_not_delivered(
    session: Session, autojump_clock: trio.testing.MockClock
) -> None:
    await declare(session, "q")
    await session.publish("", "q", message(b"short", expiration_ms=100), mandatory=True)
    await session.publish("", "q", message(b"long", expiration_ms=10_000), mandatory=True)
    await session.publish("", "q", message(b"forever"), mandatory=True)
    await trio.sleep(1)
    consumer = await session.consume("q", prefetch_count=5)
    assert buffered_bodies(consumer) == [b"long", b"forever"]


async def test_expired_messages_are_dead_lettered(
    session: Session, autojump_clock: trio.testing.MockClock
) -> None:
    await declare(session, "dead")
    await declare(
        session, "q", arguments={DEAD_LETTER_EXCHANGE: "", DEAD_LETTER_ROUTING_KEY: "dead"}
    )
    await session.publish("", "q", message(b"m", expiration_ms=50), mandatory=True)
    await trio.sleep(1)
    assert await session.get("q") is None
    letter = await session.get("dead")
    assert letter is not None
    (death,) = letter.headers["x-death"]
    assert (death["reason"], death["original-expiration"]) == ("expired", "50")


async def test_zero_ttl_reaches_a_ready_consumer_only(
    session: Session, autojump_clock: trio.testing.MockClock
) -> None:
    await declare(session, "q")
    await session.publish("", "q", message(b"nobody", expiration_ms=0), mandatory=True)
    await trio.sleep(1)
    consumer = await session.consume("q", prefetch_count=1)
    await session.publish("", "q", message(b"ready", expiration_ms=0), mandatory=True)
    assert buffered_bodies(consumer) == [b"ready"]


# --- Exclusive queues and closing ------------------------------------------------------------


async def test_exclusive_queue_belongs_to_its_session(session: Session) -> None:
    with trio.fail_after(5):
        async with open_memory_session(URL) as owner:
            await declare(owner, "mine", exclusive=True)
            with pytest.raises(QueueInUse):
                await declare(session, "mine", exclusive=True)
            with pytest.raises(DeliveryFailed):
                await session.consume("mine", prefetch_count=1)
            with pytest.raises(DeliveryFailed):
                await session.get("mine")
            # Others may still publish to it.
            await session.publish("", "mine", message(b"hi"), mandatory=True)
            assert await bodies_in(owner, "mine") == [b"hi"]
            private = await declare(owner, None, exclusive=True)
        # Closing the owner deleted both.
        for name in ["mine", private]:
            with pytest.raises(UnroutableError):
                await session.publish("", name, message(), mandatory=True)
        assert await declare(session, "mine", exclusive=True) == "mine"


async def test_exclusive_consumer_is_the_only_one(session: Session) -> None:
    """As RabbitMQ: an exclusive consumer refuses other consumers (ACCESS_REFUSED) and is
    refused where consumers exist; basic.get is not refused."""
    await declare(session, "replies")
    with trio.fail_after(5):
        async with open_memory_session(URL) as other:
            only = await session.consume("replies", prefetch_count=1, exclusive=True)
            for exclusive in (False, True):
                with pytest.raises(DeliveryFailed, match="exclusive use"):
                    await other.consume("replies", prefetch_count=1, exclusive=exclusive)
            await session.publish("", "replies", message(b"1"), mandatory=True)
            await session.publish("", "replies", message(b"2"), mandatory=True)
            assert (await receive(only)).body == b"1"
            got = await other.get("replies")  # beyond the prefetch window: anyone may get it
            assert got is not None and got.body == b"2"
            await only.cancel()
            shared = await other.consume("replies", prefetch_count=1)
            with pytest.raises(DeliveryFailed, match="exclusive use"):
                await session.consume("replies", prefetch_count=1, exclusive=True)
            await shared.cancel()


async def test_closing_a_session_requeues_to_another_sessions_consumer(session: Session) -> None:
    await declare(session, "q")
    with trio.fail_after(5):
        async with open_memory_session(URL) as leaving:
            consumer = await leaving.consume("q", prefetch_count=2)
            for body in [b"1", b"2", b"3", b"4"]:
                await session.publish("", "q", message(body), mandatory=True)
            taken = await receive(consumer)  # b"1"; b"2" stays buffered
            fetched = await leaving.get("q")  # b"3"
            assert (taken.body, fetched and fetched.body) == (b"1", b"3")
        assert taken.settled
        with pytest.raises(trio.EndOfChannel):
            await receive(consumer)
        with pytest.raises(CommunicatorClosed):
            await taken.ack()
        staying = await session.consume("q", prefetch_count=10)
        got = [await receive(staying) for _ in range(4)]
        assert [(d.body, d.redelivered) for d in got] == [
            (b"1", True),
            (b"2", True),
            (b"3", True),
            (b"4", False),
        ]


async def test_calls_after_close_raise() -> None:
    async with open_memory_session(URL) as session:
        await declare(session, "q")
        consumer = await session.consume("q", prefetch_count=1)
    await session.aclose()  # idempotent
    await consumer.cancel()  # idempotent, too
    calls = [
        session.declare_exchange("x", "direct", durable=False, auto_delete=False),
        session.declare_queue(QueueSpec("q")),
        session.delete_queue("q"),
        session.delete_exchange("x"),
        session.bind_queue("q", "amq.direct", "k"),
        session.unbind_queue("q", "amq.direct", "k"),
        session.publish("", "q", message(), mandatory=False),
        session.get("q"),
        session.consume("q", prefetch_count=1),
    ]
    for call in calls:
        with pytest.raises(CommunicatorClosed):
            await call


async def test_publish_is_a_checkpoint_and_cancelled_publish_does_nothing(
    session: Session,
) -> None:
    await declare(session, "q")
    with trio.CancelScope() as scope:
        scope.cancel()
        await session.publish("", "q", message(), mandatory=True)
    assert scope.cancelled_caught
    assert await session.get("q") is None


async def test_queue_ttl_dead_letters_even_when_nobody_touches_the_queue() -> None:
    async with open_memory_session("memory://ttl-untouched") as session:
        await session.declare_exchange("dlx", "fanout", durable=True, auto_delete=False)
        dead = await session.declare_queue(QueueSpec("dead"))
        await session.bind_queue(dead, "dlx", "")
        await session.declare_queue(QueueSpec("short", arguments={
            "x-message-ttl": 100, "x-dead-letter-exchange": "dlx"}))
        consumer = await session.consume(dead, prefetch_count=1)
        await session.publish("", "short", OutgoingMessage(b"bye", "text/plain"),
                              mandatory=True)
        with trio.fail_after(5):
            delivery = await consumer.deliveries.receive()
        assert delivery.body == b"bye"
        assert delivery.headers["x-death"][0]["reason"] == "expired"
