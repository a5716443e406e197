"""Headers and queue arguments as text in the database: a tagged JSON that keeps the AMQP
field value types (bytes, nested tables, lists, bool vs int) JSON alone would lose."""

from __future__ import annotations

import base64
import datetime
import decimal
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["dumps", "loads"]


def _encode(value: Any) -> Any:
    """A JSON-able form of ``value``: scalars as they are, everything else as [tag, data].

    Lists are always tagged, so that a plain JSON list never needs guessing on the way back.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return ["b", base64.b64encode(bytes(value)).decode("ascii")]
    if isinstance(value, Mapping):
        return ["m", {str(key): _encode(item) for key, item in value.items()}]
    if isinstance(value, (list, tuple)):
        return ["l", [_encode(item) for item in value]]
    if isinstance(value, datetime.datetime):
        return ["t", value.isoformat()]
    if isinstance(value, decimal.Decimal):
        return ["d", str(value)]
    raise TypeError(f"cannot store a {type(value).__name__} in a message header")


def _decode(value: Any) -> Any:
    if not isinstance(value, list):
        return value
    tag, data = value
    if tag == "b":
        return base64.b64decode(data)
    if tag == "m":
        return {key: _decode(item) for key, item in data.items()}
    if tag == "l":
        return [_decode(item) for item in data]
    if tag == "t":
        return datetime.datetime.fromisoformat(data)
    return decimal.Decimal(data)


def dumps(value: Mapping[str, Any]) -> str:
    """A table of field values as text; raises TypeError for a value AMQP cannot carry."""
    return json.dumps(_encode(value), separators=(",", ":"))


def loads(text: str) -> dict[str, Any]:
    decoded = _decode(json.loads(text))
    assert isinstance(decoded, dict)
    return decoded
