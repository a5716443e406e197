"""Bounded descriptions of values and exceptions that came from messages.

A decoded message is data an attacker chose. ``repr()`` of it can raise (``int`` to ``str``
conversion refuses more than ``sys.get_int_max_str_digits()`` digits) or take time and memory
in proportion to the whole value before a ``%.200s`` ever cuts it, so log lines and error
messages describe such values with :func:`safe_repr` instead, which looks at no more of the
value than it prints.
"""

from __future__ import annotations

import datetime
import decimal
import uuid
from typing import Any

__all__ = ["describe_error", "safe_repr", "safe_str_of_exception"]

#: Default length of a description.
REPR_LIMIT = 200
# An int with more bits than this is described by its size: its decimal digits alone would
# exceed any sensible limit (and converting a very large one is slow, or refused).
_INT_BITS_SHOWN = 256
# Types whose repr() is short whatever the value (bounded by their fixed size).
_FIXED_SIZE = (bool, float, complex, datetime.datetime, datetime.date, datetime.time,
               datetime.timedelta, uuid.UUID)


def safe_repr(value: Any, limit: int = REPR_LIMIT) -> str:
    """A description of ``value`` of at most about ``limit`` characters, made without
    visiting more of ``value`` than that and without raising."""
    out: list[str] = []
    try:
        _describe(value, out, [max(limit, 8)])
    except Exception:
        # A container subclass (from a custom decoder) whose iteration raises.
        return f"<{type(value).__qualname__} object>"
    text = "".join(out)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _describe(value: Any, out: list[str], budget: list[int]) -> None:
    """Append pieces describing ``value`` to ``out`` while ``budget[0]`` characters remain.

    Recursion depth is bounded by the budget: every level appends at least one character.
    """
    if budget[0] <= 0:
        return
    piece: str | None = None
    if value is None or isinstance(value, _FIXED_SIZE):
        piece = repr(value)
    elif isinstance(value, int):
        piece = (repr(value) if value.bit_length() <= _INT_BITS_SHOWN
                 else f"<int of {value.bit_length()} bits>")
    elif isinstance(value, (str, bytes, bytearray)):
        # Only the part that can be shown is converted.
        shown = value[:budget[0]]
        piece = repr(shown) + ("..." if len(value) > len(shown) else "")
    elif isinstance(value, decimal.Decimal):
        digits = len(value.as_tuple().digits)
        piece = repr(value) if digits <= _INT_BITS_SHOWN else f"<Decimal of {digits} digits>"
    if piece is not None:
        out.append(piece)
        budget[0] -= len(piece)
        return
    if isinstance(value, (list, tuple, set, frozenset, dict)):
        _describe_container(value, out, budget)
        return
    tag = getattr(value, "tag", None)
    if type(value).__name__ == "CBORTag" and isinstance(tag, int):
        out.append(f"CBORTag({tag}, ")
        budget[0] -= 10
        _describe(getattr(value, "value", None), out, budget)
        out.append(")")
        budget[0] -= 1
        return
    # Anything else: its own repr() could do anything, so only its type is named.
    piece = f"<{type(value).__qualname__} object>"
    out.append(piece)
    budget[0] -= len(piece)


def _describe_container(value: Any, out: list[str], budget: list[int]) -> None:
    if isinstance(value, list):
        opening, closing = "[", "]"
    elif isinstance(value, tuple):
        opening, closing = "(", ")"
    elif isinstance(value, dict):
        opening, closing = "{", "}"
    else:
        opening, closing = f"{type(value).__name__}({{", "})"
    out.append(opening)
    budget[0] -= len(opening)
    items = value.items() if isinstance(value, dict) else value
    for index, item in enumerate(items):
        if budget[0] <= 0:
            out.append(f"... ({len(value)} items)")
            break
        if index:
            out.append(", ")
            budget[0] -= 2
        if isinstance(value, dict):
            _describe(item[0], out, budget)
            out.append(": ")
            budget[0] -= 2
            _describe(item[1], out, budget)
        else:
            _describe(item, out, budget)
    out.append(closing)
    budget[0] -= len(closing)


def safe_str_of_exception(exc: BaseException, limit: int = 2000) -> str:
    """``str(exc)``, cut to ``limit`` characters; a placeholder if ``str()`` raises.

    An exception's own ``__str__`` is arbitrary code and may format a hostile value (a
    ``KeyError`` of a huge int raises in ``str()``), so its failure must not propagate.
    """
    try:
        text = str(exc)
    except Exception as problem:
        return f"<{type(exc).__qualname__}: str() failed with {type(problem).__qualname__}>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def describe_error(exc: BaseException, limit: int = 300) -> str:
    """``"TypeName: message"`` for a log line, bounded and never raising."""
    return f"{type(exc).__qualname__}: {safe_str_of_exception(exc, limit)}"
