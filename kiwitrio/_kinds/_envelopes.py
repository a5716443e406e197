"""The reply envelope: what a worker sends back to a requester, and how it is read.

``{"result": value}`` or ``{"exception": {"type", "message", "traceback"}}`` is the final
reply. A subscriber registered with ``pending_replies=True`` also sends ``{"pending": None}``
each time its outcome turns out to be a future still to be waited for (kiwiPy's "pending"
response). Reading is defensive: the envelope comes from another process, so anything that is
not one of these shapes is a :class:`~kiwitrio.DecodeError`, and a remote exception's fields
are described, never converted.
"""

from __future__ import annotations

import traceback
from typing import Any

from .._errors import DecodeError, RemoteException
from .._saferepr import safe_repr, safe_str_of_exception

__all__ = ["exception_envelope", "is_pending", "parse_envelope", "pending_envelope",
           "result_envelope"]

#: The message of an exception sent back is cut to this many characters.
_MAX_REMOTE_MESSAGE = 10_000
#: The key of an intermediate ("pending") reply.
_PENDING_KEY = "pending"


def result_envelope(value: Any) -> dict[str, Any]:
    return {"result": value}


def pending_envelope() -> dict[str, Any]:
    """An intermediate reply: the outcome is a future, the final reply comes later."""
    return {_PENDING_KEY: None}


def exception_envelope(exc: BaseException) -> dict[str, Any]:
    # The exception may carry a value from a hostile message (a KeyError of a key that
    # cannot be printed): neither its str() nor its traceback may raise here.
    try:
        formatted = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:
        formatted = ""
    return {
        "exception": {
            "type": type(exc).__qualname__,
            "message": safe_str_of_exception(exc, _MAX_REMOTE_MESSAGE),
            "traceback": formatted,
        }
    }


def _text_field(info: dict[Any, Any], key: str, default: str) -> str:
    """A str field of a remote exception; anything else is described, not converted (its
    str() is the sender's choice of code path: a huge int raises)."""
    value = info.get(key, default)
    return value if isinstance(value, str) else safe_repr(value)


def is_pending(envelope: Any) -> bool:
    return isinstance(envelope, dict) and len(envelope) == 1 and _PENDING_KEY in envelope


def parse_envelope(envelope: Any) -> tuple[Any, BaseException | None]:
    if isinstance(envelope, dict):
        if "result" in envelope:
            return envelope["result"], None
        info = envelope.get("exception")
        if isinstance(info, dict):
            return None, RemoteException(
                _text_field(info, "type", "Exception"),
                _text_field(info, "message", ""),
                _text_field(info, "traceback", ""),
            )
    raise DecodeError(f"not a reply envelope: {safe_repr(envelope)}")
