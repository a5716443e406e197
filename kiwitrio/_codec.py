"""Message encoding: CBOR by default, pluggable.

An encoder is any ``Callable[[Any], bytes]`` and a decoder any ``Callable[[bytes], Any]``;
:func:`open_communicator` takes both. The default pair, :func:`cbor_encode` and
:func:`cbor_decode`, round-trips ``None``, bools, integers of any size, floats, ``str``,
``bytes``, lists, dicts (keys of any of these types), sets and frozensets (decoded as sets),
timezone-aware and naive ``datetime``, ``date``, ``UUID`` and ``Decimal``. Tuples decode as
lists, except as dict keys, where they stay tuples.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

import cbor2

from ._errors import DecodeError

__all__ = ["CBOR_CONTENT_TYPE", "Decoder", "Encoder", "cbor_decode", "cbor_encode"]

Encoder = Callable[[Any], bytes]
Decoder = Callable[[bytes], Any]

CBOR_CONTENT_TYPE = "application/cbor"

# CBOR's standard datetime tags need a timezone. Naive datetimes travel under a tag of our
# own (from the first-come-first-served range) holding the ISO 8601 text, so they come back
# naive instead of silently gaining a timezone.
_NAIVE_DATETIME_TAG = 27508


_RFC3339_DATETIME_TAG = 0


def _encode_datetime(encoder: cbor2.CBOREncoder, value: datetime.datetime) -> None:
    tag = _NAIVE_DATETIME_TAG if value.tzinfo is None else _RFC3339_DATETIME_TAG
    encoder.encode(cbor2.CBORTag(tag, value.isoformat()))


_ENCODERS: dict[type, Callable[[cbor2.CBOREncoder, Any], None]] = {
    datetime.datetime: _encode_datetime
}


def _decode_extra(*args: Any) -> Any:
    # cbor2 5 calls tag_hook(decoder, tag); cbor2 6 calls tag_hook(tag, immutable).
    tag = next(arg for arg in args if isinstance(arg, cbor2.CBORTag))
    if tag.tag == _NAIVE_DATETIME_TAG and isinstance(tag.value, str):
        return datetime.datetime.fromisoformat(tag.value)
    return tag


def cbor_encode(value: Any) -> bytes:
    """Encode ``value`` as CBOR. Raises :class:`TypeError` for types it cannot encode."""
    try:
        return cbor2.dumps(value, encoders=_ENCODERS)
    except cbor2.CBOREncodeError as exc:
        raise TypeError(str(exc)) from exc


def cbor_decode(data: bytes) -> Any:
    """Decode CBOR bytes. Raises :class:`~kiwitrio.DecodeError` on malformed input."""
    try:
        return cbor2.loads(data, tag_hook=_decode_extra)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError) as exc:
        raise DecodeError(f"malformed CBOR message ({len(data)} bytes): {exc}") from exc
