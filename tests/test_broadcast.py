"""Broadcasts and filters."""

from __future__ import annotations

import logging
import random
import re
import time
from typing import Any

import aiormq.exceptions
import pytest
import trio
from pamqp import commands as spec

import kiwitrio
from kiwitrio._backends import NegativeAck, OutgoingMessage
from kiwitrio._kinds._broadcast import binding_keys

from .conftest import OpenComm

DEADLINE = 10


class Inbox:
    """Collects broadcasts and lets a test wait for a given number of them."""

    def __init__(self) -> None:
        self.items: list[tuple[Any, Any, Any, Any]] = []
        self._changed = trio.Event()

    async def __call__(self, _comm: Any, body: Any, sender: Any, subject: Any, cid: Any) -> None:
        self.items.append((body, sender, subject, cid))
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, count: int) -> None:
        with trio.fail_after(DEADLINE):
            while len(self.items) < count:
                await self._changed.wait()

    def bodies(self) -> list[Any]:
        return [item[0] for item in self.items]


@pytest.mark.parametrize(
    ("pattern", "matching", "not_matching"),
    [
        ("jobs.*", ["jobs.a", "jobs.a.b", "jobs."], ["jobs", "other.a", "xjobs.a"]),
        ("*.done", ["a.done", "a.b.done"], ["done", "a.done.x"]),
        ("state_changed.*.running", ["state_changed.created.running"],
         ["state_changed.created.waiting"]),
        ("exact", ["exact"], ["exactly", "inexact"]),
        (re.compile(r"^(?!state_changed).*"), ["jobs.a", "x"], ["state_changed.a"]),
        (42, [42], [43, "42"]),
    ],
)
def test_filter_matching(pattern: Any, matching: list[Any], not_matching: list[Any]) -> None:
    filt = kiwitrio.BroadcastFilter(lambda *args: None, subject=pattern)
    for subject in matching:
        assert not filt.is_filtered(None, subject), subject
    for subject in not_matching:
        assert filt.is_filtered(None, subject), subject


def test_sender_filter_and_none_values() -> None:
    filt = kiwitrio.BroadcastFilter(lambda *args: None, sender="proc-*")
    assert not filt.is_filtered("proc-1", "anything")
    assert filt.is_filtered("worker-1", "anything")
    # As in kiwiPy, an unset sender/subject is not filtered on.
    assert not filt.is_filtered(None, None)


def test_binding_keys_cover_what_the_filter_accepts() -> None:
    def keys(pattern: Any) -> set[str]:
        return binding_keys(kiwitrio.BroadcastFilter(lambda *a: None, subject=pattern))

    assert keys("jobs.*") == {"", "jobs.#"}
    assert keys("a.b*c.d") == {"", "a.#"}
    assert keys("exact.subject") == {"", "exact.subject"}
    assert keys(re.compile("x")) == {"", "#"}
    assert binding_keys(lambda *a: None) == {"#"}


async def test_broadcast_reaches_every_subscriber(open_comm: OpenComm) -> None:
    first, second = Inbox(), Inbox()
    async with open_comm() as sender, open_comm() as listener:
        await listener.add_broadcast_subscriber(first)
        await listener.add_broadcast_subscriber(second)
        await sender.broadcast_send({"n": 1}, sender="me", subject="news", correlation_id="c1")
        await first.wait_for(1)
        await second.wait_for(1)
    assert first.items == [({"n": 1}, "me", "news", "c1")]
    assert second.items == first.items


async def test_filtered_subscribers_get_only_what_matches(open_comm: OpenComm) -> None:
    jobs, from_proc, everything = Inbox(), Inbox(), Inbox()
    async with open_comm() as comm:
        await comm.add_broadcast_subscriber(kiwitrio.BroadcastFilter(jobs, subject="jobs.*"))
        await comm.add_broadcast_subscriber(kiwitrio.BroadcastFilter(from_proc, sender="proc-1"))
        await comm.add_broadcast_subscriber(everything)
        sent = [("a", "proc-1", "jobs"), ("b", "proc-2", "jobs.x"), ("c", "proc-1", "other"),
                ("d", None, None), ("e", "proc-2", "jobs.y.z")]
        for body, sender, subject in sent:
            await comm.broadcast_send(body, sender=sender, subject=subject)
        await everything.wait_for(len(sent))
        await jobs.wait_for(3)
        await from_proc.wait_for(3)
        # A last broadcast that all three accept: everything before it has been dispatched.
        await comm.broadcast_send("end", sender="proc-1", subject="jobs.end")
        await everything.wait_for(len(sent) + 1)
        await jobs.wait_for(4)
        await from_proc.wait_for(4)
    assert sorted(jobs.bodies()) == ["b", "d", "e", "end"]
    assert sorted(from_proc.bodies()) == ["a", "c", "d", "end"]


async def test_removed_broadcast_subscriber_gets_nothing_more(open_comm: OpenComm) -> None:
    removed, kept = Inbox(), Inbox()
    async with open_comm() as comm:
        ident = await comm.add_broadcast_subscriber(removed, identifier="gone")
        await comm.add_broadcast_subscriber(kept)
        with pytest.raises(kiwitrio.DuplicateSubscriberIdentifier):
            await comm.add_broadcast_subscriber(removed, identifier="gone")
        await comm.broadcast_send(1)
        await removed.wait_for(1)
        await comm.remove_broadcast_subscriber(ident)
        await comm.broadcast_send(2)
        await kept.wait_for(2)
    assert removed.bodies() == [1]


async def test_failing_broadcast_subscriber_does_not_break_others(open_comm: OpenComm) -> None:
    inbox = Inbox()

    def failing(*_args: Any) -> None:
        raise RuntimeError("listener bug")

    async with open_comm() as comm:
        await comm.add_broadcast_subscriber(failing)
        await comm.add_broadcast_subscriber(inbox)
        await comm.broadcast_send(1)
        await comm.broadcast_send(2)
        await inbox.wait_for(2)
        assert not comm.is_closed()


async def test_overlong_subject_is_refused(open_comm: OpenComm) -> None:
    async with open_comm() as comm:
        with pytest.raises(ValueError, match="at most 255 bytes"):
            await comm.broadcast_send(None, subject="x" * 256)


async def test_filters_are_fixed_once_subscribed(open_comm: OpenComm) -> None:
    inbox = Inbox()
    async with open_comm() as comm:
        filt = kiwitrio.BroadcastFilter(inbox, subject="a.*")
        ident = await comm.add_broadcast_subscriber(filt)
        with pytest.raises(RuntimeError, match="before add_broadcast_subscriber"):
            filt.add_subject_filter("c.d")
        await comm.remove_broadcast_subscriber(ident)
        # Unsubscribing removed exactly its own bindings: a new subscriber still gets "a.x".
        again = Inbox()
        await comm.add_broadcast_subscriber(kiwitrio.BroadcastFilter(again, subject="a.*"))
        await comm.broadcast_send(1, subject="a.x")
        await again.wait_for(1)


async def test_testing_mode_exchange_that_vanished_is_declared_again(open_comm: OpenComm,
                                                                     names: Any) -> None:
    inbox = Inbox()
    async with open_comm() as first, open_comm() as second:
        ident = await first.add_broadcast_subscriber(inbox)
        await first.remove_broadcast_subscriber(ident)  # last binding gone: auto-deleted
        await second.broadcast_send("still works")  # declared again on the way
        await first.add_broadcast_subscriber(inbox)
        await second.broadcast_send("and arrives")
        await inbox.wait_for(1)
    assert inbox.bodies() == ["and arrives"]


def test_wildcard_filters_match_as_the_regex_they_stand_for() -> None:
    """The linear matcher agrees with the regex (``*`` -> ``.*``, full match) it replaced."""
    rng = random.Random(4)
    for _ in range(3000):
        pattern = "".join(rng.choice("ab.*") for _ in range(rng.randint(0, 7)))
        regex = re.compile(".*".join(re.escape(p) for p in pattern.split("*")), re.DOTALL)
        filt = kiwitrio.BroadcastFilter(lambda *args: None, subject=pattern)
        for _ in range(5):
            subject = "".join(rng.choice("ab.") for _ in range(rng.randint(0, 10)))
            expected = regex.fullmatch(subject) is not None
            assert filt.is_filtered(None, subject) is not expected, (pattern, subject)


def test_wildcard_filters_take_linear_time() -> None:
    """A regex ``.*a.*a.*b`` backtracks: 1.5 s for 2000 characters, growing with the cube.
    The matcher looks at each character a bounded number of times."""
    filt = kiwitrio.BroadcastFilter(lambda *args: None, subject="*a*a*b", sender="x*y*z")
    began = time.monotonic()
    assert filt.is_filtered(None, "a" * 2000)
    assert filt.is_filtered("x" * 1000, None)
    assert filt.is_filtered(None, "a" * 1_000_000 + "c")
    assert not filt.is_filtered(None, "a" * 1_000_000 + "b")
    assert time.monotonic() - began < 0.2


async def test_broadcast_envelopes_with_overlong_subject_or_sender_are_rejected(
    open_comm: OpenComm, names: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """An envelope made by hand may claim a subject other than its routing key, of any
    length: filters would run on it. The limits broadcast_send enforces hold on arrival."""
    inbox = Inbox()
    async with open_comm() as comm:
        await comm.add_broadcast_subscriber(
            kiwitrio.BroadcastFilter(inbox, subject="news.*", sender="*"))
        for envelope in ({"body": 1, "subject": "news." + "x" * 300, "sender": "a"},
                         {"body": 2, "subject": "news.a", "sender": "y" * 2000}):
            await comm._ctx.session.publish(names.message_exchange, "news.a", OutgoingMessage(
                kiwitrio.cbor_encode(envelope), kiwitrio.CBOR_CONTENT_TYPE), mandatory=False)
        with pytest.raises(ValueError, match="sender"):
            await comm.broadcast_send(3, sender="y" * 2000, subject="news.a")
        await comm.broadcast_send(4, sender="a", subject="news.a")
        await inbox.wait_for(1)
    assert inbox.bodies() == [4]
    rejected = [r.getMessage() for r in caplog.records
                if r.levelno >= logging.ERROR and "rejecting broadcast" in r.getMessage()]
    # (Broadcasts are handled concurrently: the two lines come in either order.)
    assert len(rejected) == 2, rejected
    assert any("subject of 305 characters" in line for line in rejected), rejected
    assert any("sender of 2000 characters" in line for line in rejected), rejected


def _nack_from_aiormq() -> kiwitrio.DeliveryFailed:
    """What the aio-pika backend raises for a nack: DeliveryFailed from aiormq's DeliveryError."""
    try:
        try:
            raise aiormq.exceptions.DeliveryError(None, spec.Basic.Nack(delivery_tag=7))
        except aiormq.exceptions.DeliveryError as exc:
            raise kiwitrio.DeliveryFailed(f"the broker did not accept the message: {exc}") from exc
    except kiwitrio.DeliveryFailed as failed:
        return failed


@pytest.mark.parametrize("refusal", [
    pytest.param(lambda: NegativeAck("Basic.Nack"), id="NegativeAck"),
    pytest.param(_nack_from_aiormq, id="aiormq-DeliveryError"),
])
async def test_nacked_broadcast_is_not_an_error(
    open_comm: OpenComm, monkeypatch: pytest.MonkeyPatch, refusal: Any
) -> None:
    # RabbitMQ 4.3 nacks a broadcast routed to a subscriber's queue that is being deleted,
    # though every other subscriber got it (seen when a worker was SIGKILLed mid-run).
    async with open_comm() as comm:
        async def nacked(*_args: Any, **_kwargs: Any) -> None:
            raise refusal()

        monkeypatch.setattr(comm._ctx.session, "publish", nacked)
        with trio.fail_after(DEADLINE):
            await comm.broadcast_send("to whom it may concern", subject="news")


async def test_broadcast_refused_otherwise_raises(
    open_comm: OpenComm, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_comm() as comm:
        async def refused(*_args: Any, **_kwargs: Any) -> None:
            raise kiwitrio.DeliveryFailed("PRECONDITION_FAILED - message size is larger")

        monkeypatch.setattr(comm._ctx.session, "publish", refused)
        with trio.fail_after(DEADLINE), pytest.raises(kiwitrio.DeliveryFailed,
                                                      match="PRECONDITION_FAILED"):
            await comm.broadcast_send("too big", subject="news")
