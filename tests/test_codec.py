"""The CBOR codec, and pluggable encoders."""

from __future__ import annotations

import datetime
import decimal
import json
import uuid
from typing import Any

import pytest
import trio

import kiwitrio
from kiwitrio import cbor_decode, cbor_encode

from .conftest import OpenComm

VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    2**200,
    -(2**200),
    1.5,
    float("inf"),
    "text ✓",
    b"\x00\xffbytes",
    [1, [2, [3]]],
    {"nested": {"list": [1, "a"]}},
    {1: "int key", (1, 2): "tuple key", b"k": "bytes key", None: "none key"},
    datetime.datetime(2026, 11, 25, 12, 30, 1, 123456, tzinfo=datetime.timezone.utc),
    datetime.datetime(2026, 11, 25, 12, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=-5))),
    datetime.datetime(2026, 11, 25, 12, 30, 1, 5),  # naive stays naive
    datetime.date(2026, 11, 25),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    decimal.Decimal("3.14159265358979323846264338327950288"),
    decimal.Decimal("-0.00"),
    {1, 2, 3},
    {"set": {"a", "b"}},
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_round_trip(value: Any) -> None:
    decoded = cbor_decode(cbor_encode(value))
    assert decoded == value
    assert type(decoded) is type(value)
    if isinstance(value, datetime.datetime):
        assert decoded.tzinfo == value.tzinfo


def test_nan_round_trips() -> None:
    decoded = cbor_decode(cbor_encode(float("nan")))
    assert decoded != decoded


def test_frozenset_and_tuple_come_back_as_set_and_list() -> None:
    assert cbor_decode(cbor_encode(frozenset({1}))) == {1}
    assert cbor_decode(cbor_encode((1, 2))) == [1, 2]


def test_unencodable_value_raises_type_error() -> None:
    with pytest.raises(TypeError):
        cbor_encode(object())


@pytest.mark.parametrize("garbage", [b"", b"\xff", b"\x1f\x00", b"\x5b" + b"\xff" * 8])
def test_garbage_raises_decode_error(garbage: bytes) -> None:
    with pytest.raises(kiwitrio.DecodeError):
        cbor_decode(garbage)


async def test_custom_encoder_and_decoder(open_comm: OpenComm) -> None:
    def encode(value: Any) -> bytes:
        return json.dumps(value).encode()

    def decode(data: bytes) -> Any:
        return json.loads(data)

    async with open_comm(encoder=encode, decoder=decode, content_type="application/json") as comm:
        await comm.add_task_subscriber(lambda _c, task: {"got": task})
        await comm.add_rpc_subscriber(lambda _c, msg: msg["x"] * 2, "doubler")
        with trio.fail_after(10):
            assert await (await comm.task_send([1, "a"])) == {"got": [1, "a"]}
            assert await (await comm.rpc_send("doubler", {"x": 4})) == 8
