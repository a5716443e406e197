"""Writing for people and for pipes: stderr lines, JSON lines for anything CBOR can carry,
plurals, and URLs without their passwords."""

from __future__ import annotations

import datetime
import json
import sys
from typing import Any

from .._saferepr import safe_repr
from .._urls import redact_url

__all__ = ["eprint", "plural", "redact", "to_json"]

#: ``url`` without its password (the core's helper).
redact = redact_url


def eprint(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, (set, frozenset)):
        return list(value)
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    return repr(value)


def to_json(value: Any) -> str:
    """One line of JSON for anything CBOR can carry (bytes as text, other oddities as repr)."""
    try:
        return json.dumps(value, default=_json_default, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):  # keys that are not str/int/float...
        # ...or a value whose repr() raises itself (an int too long to print): described.
        return json.dumps(safe_repr(value, 10_000), ensure_ascii=False)


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
