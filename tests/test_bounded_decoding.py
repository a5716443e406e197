"""The default decoder's limits hold while decoding, and large bodies cannot stall the loop."""

from __future__ import annotations

import datetime
import decimal
import ipaddress
import random
import time
import tracemalloc
import uuid
from typing import Any

import cbor2
import pytest
import trio

import kiwitrio
import kiwitrio._codec._bounded as bounded
import kiwitrio._codec._scanner as scanner
from kiwitrio import DecodeLimits, cbor_decode, cbor_decoder, cbor_encode
from kiwitrio._backends import OutgoingMessage

from .conftest import OpenComm
from .hostile import array_of, payloads, tag

DEADLINE = 10


def _id(payload: Any) -> str:
    return str(payload.name)


@pytest.mark.parametrize("payload", payloads(scale=0.1), ids=_id)
def test_hostile_payload_is_refused_quickly_and_cheaply(payload: Any) -> None:
    # A smaller budget than the default, so that the (scaled-down) floods hit it.
    decode = cbor_decoder(DecodeLimits(max_decoded_size=16 * 1024 * 1024))
    began = time.monotonic()
    with pytest.raises(kiwitrio.DecodeError) as info:
        decode(payload.body)
    elapsed = time.monotonic() - began
    assert "refused CBOR message" in str(info.value) or "malformed" in str(info.value)
    # Again, for the memory it takes (tracemalloc makes Python much slower, so not timed).
    tracemalloc.start()
    try:
        with pytest.raises(kiwitrio.DecodeError):
            decode(payload.body)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Generous bounds for a loaded machine; unbounded, these take gigabytes, minutes or
    # forever.
    assert elapsed < 3, elapsed
    assert peak < 8 * 1024 * 1024, peak


@pytest.mark.parametrize("payload", [p for p in payloads() if len(p.body) < 1_000_000],
                         ids=_id)
def test_hostile_payload_is_refused_with_the_default_limits(payload: Any) -> None:
    with pytest.raises(kiwitrio.DecodeError):
        cbor_decode(payload.body)


def test_the_refusal_says_why_without_quoting_the_body() -> None:
    body = cbor2.dumps(["secret" * 100, cbor2.CBORTag(28, [1])])
    with pytest.raises(kiwitrio.DecodeError) as info:
        cbor_decode(body)
    assert "CBOR tag 28 is not accepted" in str(info.value)
    assert "secret" not in str(info.value)


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    def scalar() -> Any:
        return rng.choice([
            lambda: rng.randint(-2**70, 2**70), lambda: rng.randint(-300, 300),
            lambda: rng.random(), lambda: float("inf"),
            lambda: "".join(rng.choice("aé€😀") for _ in range(rng.randint(0, 30))),
            lambda: bytes(rng.randrange(256) for _ in range(rng.randint(0, 30))),
            lambda: None, lambda: True, lambda: False,
            lambda: datetime.datetime(2020, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
            lambda: datetime.datetime(2020, 1, 2, 3, 4, 5), lambda: datetime.date(2021, 5, 6),
            lambda: uuid.UUID(int=rng.getrandbits(128)),
            lambda: decimal.Decimal(rng.randint(-10**30, 10**30)).scaleb(rng.randint(-9, 9)),
            lambda: ipaddress.ip_address("10.0.0.1"), lambda: complex(1, 2),
        ])()

    def hashable(level: int) -> Any:
        if level > 2 or rng.random() < 0.5:
            return scalar()
        return tuple(hashable(level + 1) for _ in range(rng.randint(0, 3)))

    choice = rng.random()
    if depth > 6 or choice < 0.4:
        return scalar()
    if choice < 0.6:
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 9))]
    if choice < 0.8:
        return {hashable(0): _random_value(rng, depth + 1) for _ in range(rng.randint(0, 9))}
    if choice < 0.9:
        return {hashable(0) for _ in range(rng.randint(0, 5))}
    return {f"k{i}": _random_value(rng, depth + 1) for i in range(rng.randint(0, 9))}


def _reference_decode(data: bytes) -> Any:
    """cbor2 without limits, with kiwitrio's one tag of its own."""
    return cbor2.loads(data, semantic_decoders={
        kiwitrio._codec.NAIVE_DATETIME_TAG: lambda value, _immutable: (
            datetime.datetime.fromisoformat(value))})


@pytest.mark.parametrize("slice_items", [2, 5, 2048])
def test_values_decode_as_cbor2_decodes_them_on_every_path(
    monkeypatch: pytest.MonkeyPatch, slice_items: int
) -> None:
    """The scanner and the decoding in pieces change nothing: every path (cbor2 at once,
    scanned, scanned and put together from pieces of a few items) gives cbor2's value."""
    decode = cbor_decoder(DecodeLimits(max_key_items=10**6))
    rng = random.Random(15 + slice_items)
    values = [_random_value(rng) for _ in range(300)]
    expected = [_reference_decode(cbor_encode(value)) for value in values]
    assert [decode(cbor_encode(value)) for value in values] == expected  # mostly fast path
    monkeypatch.setattr(bounded, "FAST_PATH_BYTES", 0)  # scanned
    monkeypatch.setattr(scanner, "SLICE_ITEMS", slice_items)  # and put together
    assert [decode(cbor_encode(value)) for value in values] == expected


def test_indefinite_lengths_decode_as_cbor2_decodes_them(monkeypatch: pytest.MonkeyPatch,
                                                         ) -> None:
    monkeypatch.setattr(bounded, "FAST_PATH_BYTES", 0)
    monkeypatch.setattr(scanner, "SLICE_ITEMS", 3)
    text = b"\x7f\x63abc\x62de\xff"  # "abcde" in two chunks
    data = b"\x5f\x42\x00\x01\x41\x02\xff"  # b"\x00\x01\x02"
    bodies = [
        b"\x9f" + b"\x01" * 10 + b"\xff",
        b"\xbf" + b"".join(cbor2.dumps(f"k{i}") + b"\x9f\x01\x02\xff" for i in range(6)) + b"\xff",
        b"\x9f" + text + data + b"\x9f" + b"\x80" * 7 + b"\xff" + b"\xff",
        tag(258, b"\x9f" + b"".join(cbor2.dumps(i) for i in range(9)) + b"\xff"),
        array_of(10, b"\xa0"),
        tag(2, b"\x5f\x41\x01\x41\x00\xff"),  # a big integer in chunks: 256
    ]
    for body in bodies:
        assert cbor_decode(body) == cbor2.loads(body), body


def test_large_containers_are_decoded_in_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    """No single call into cbor2's C decoder (which holds the GIL throughout) gets more
    than SLICE_ITEMS items of a large body."""
    calls: list[int] = []
    real_loads = cbor2.loads

    def loads(data: bytes, **kwargs: Any) -> Any:
        calls.append(len(data))
        return real_loads(data, **kwargs)

    monkeypatch.setattr(bounded.cbor2, "loads", loads)
    value = {"body": [[i, "x"] for i in range(100_000)], "more": list(range(50_000))}
    assert cbor_decode(cbor_encode(value)) == value
    # [i, "x"] is at most 9 + 2 + 1 bytes and 3 items, an int at most 5 bytes.
    assert max(calls) <= (kiwitrio._codec.SLICE_ITEMS // 3) * 12 + 16, max(calls)
    assert len(calls) > 50


@pytest.mark.parametrize(("limits", "body"), [
    (DecodeLimits(max_depth=5), b"\x81" * 6 + b"\x00"),
    (DecodeLimits(max_bignum_bytes=8), cbor2.dumps(1 << 80)),
    (DecodeLimits(max_key_items=10), cbor2.dumps({(i, i): 0 for i in range(10)})),
    (DecodeLimits(max_decoded_size=10_000), cbor2.dumps([[]] * 200)),
], ids=["depth", "bignum", "key-items", "decoded-size"])
def test_limits_are_configurable(limits: DecodeLimits, body: bytes) -> None:
    with pytest.raises(kiwitrio.DecodeError, match="refused"):
        cbor_decoder(limits)(body)
    cbor_decode(body)  # within the default limits


def test_what_the_encoder_makes_is_accepted() -> None:
    value = {"when": datetime.datetime.now(datetime.timezone.utc),
             "naive": datetime.datetime(2020, 1, 1), "day": datetime.date(2020, 1, 1),
             "id": uuid.uuid4(), "price": decimal.Decimal("-1.25"), "tags": {1, 2},
             "big": 1 << 8000, "small": -(1 << 100), "ip": ipaddress.ip_network("10.0.0.0/8"),
             (1, 2): "tuple key", frozenset({3}): "frozenset key"}
    assert cbor_decode(cbor_encode(value)) == value


@pytest.mark.parametrize("subscriber_kind", ["task", "rpc"])
async def test_loop_stays_responsive_while_a_large_body_decodes(
    open_comm: OpenComm, subscriber_kind: str
) -> None:
    """A 4 MB body of 1.4 million small containers (what the default decoded-size budget
    still accepts): cbor2 alone holds the Trio thread, and the GIL, for all of its decoding
    (one to several seconds here). Decoded off the Trio thread and in slices, it leaves the
    loop serving: an RPC sent meanwhile is answered within a second, and no pause of a 5 ms
    timer takes more than a third of the decoding time (what is left are the interpreter's
    full garbage collections, which stop every thread: about 0.1 s each at this size)."""
    big = [[i % 200] for i in range(1_400_000)]
    body = cbor_encode(big)
    got_it = trio.Event()

    async def take(_comm: Any, value: Any) -> int:
        got_it.set()
        return len(value)

    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            await trio.sleep(0.005)
            ticks.append(trio.current_time())

    async with open_comm() as comm, trio.open_nursery() as nursery:
        await comm.add_rpc_subscriber(lambda _c, msg: msg, "echo")
        if subscriber_kind == "task":
            await comm.add_task_subscriber(take)
        else:
            await comm.add_rpc_subscriber(take, "big")
        # Published raw, so that the sender's encoding is not part of what is measured.
        reply_queue, handle = await comm._replies.expect()
        message = OutgoingMessage(body, kiwitrio.CBOR_CONTENT_TYPE, reply_to=reply_queue,
                                  correlation_id=handle.correlation_id)
        nursery.start_soon(ticker)
        began = trio.current_time()
        if subscriber_kind == "task":
            queue = comm._default_queue
            await comm._ctx.session.publish(queue.exchange, queue.name, message,
                                            mandatory=True)
        else:
            await comm._ctx.session.publish("", comm._rpc.queue_name("big"), message,
                                            mandatory=True)
        await trio.sleep(0.05)  # the body is on its way, or being decoded
        with trio.fail_after(1.0):
            assert await (await comm.rpc_send("echo", "meanwhile")) == "meanwhile"
        answered = trio.current_time()
        with trio.fail_after(120):
            await got_it.wait()
        decoding = trio.current_time() - began
        window = [t for t in ticks if t <= began + decoding]
        with trio.fail_after(60):
            assert await handle == len(big)
        nursery.cancel_scope.cancel()
    assert answered < began + decoding, "the RPC was not answered while decoding went on"
    pauses = [b - a for a, b in zip([began, *window], window, strict=False)]
    assert max(pauses) < decoding / 3, (decoding, sorted(pauses)[-5:])
