"""Message encoding: CBOR by default, pluggable.

An encoder is any ``Callable[[Any], bytes]`` and a decoder any ``Callable[[bytes], Any]``;
:func:`open_communicator` takes both. The default pair, :func:`cbor_encode` and
:func:`cbor_decode`, round-trips ``None``, bools, integers (of up to 1024 bytes, 8192 bits,
by default; see :class:`DecodeLimits`), floats, ``str``,
``bytes``, lists, dicts (keys of any of these types), sets and frozensets (decoded as sets),
timezone-aware and naive ``datetime``, ``date``, ``UUID`` and ``Decimal``. Tuples decode as
lists, except as dict keys, where they stay tuples.

:func:`cbor_decode` decodes what strangers send: it enforces :class:`DecodeLimits` while
decoding (accepted tags, big integers, nesting, declared lengths, decoded size, hashed keys;
see :mod:`kiwitrio._codec._bounded`), and :func:`cbor_decoder` makes one with other limits.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

import cbor2

from ._bounded import BoundedCborDecoder
from ._policy import NAIVE_DATETIME_TAG, DecodeLimits

__all__ = ["CBOR_CONTENT_TYPE", "DecodeLimits", "Decoder", "Encoder", "cbor_decode",
           "cbor_decoder", "cbor_encode"]

Encoder = Callable[[Any], bytes]
Decoder = Callable[[bytes], Any]

CBOR_CONTENT_TYPE = "application/cbor"

# CBOR's standard datetime tags need a timezone. Naive datetimes travel under a tag of our
# own (NAIVE_DATETIME_TAG, from the first-come-first-served range) holding the ISO 8601 text,
# so they come back naive instead of silently gaining a timezone.
_RFC3339_DATETIME_TAG = 0


def _encode_datetime(encoder: cbor2.CBOREncoder, value: datetime.datetime) -> None:
    tag = NAIVE_DATETIME_TAG if value.tzinfo is None else _RFC3339_DATETIME_TAG
    encoder.encode(cbor2.CBORTag(tag, value.isoformat()))


_ENCODERS: dict[type, Callable[[cbor2.CBOREncoder, Any], None]] = {
    datetime.datetime: _encode_datetime
}


def cbor_encode(value: Any) -> bytes:
    """Encode ``value`` as CBOR. Raises :class:`TypeError` for types it cannot encode."""
    try:
        return cbor2.dumps(value, encoders=_ENCODERS)
    except cbor2.CBOREncodeError as exc:
        raise TypeError(str(exc)) from exc


def cbor_decoder(limits: DecodeLimits | None = None) -> Decoder:
    """A CBOR decoder enforcing ``limits`` (default: :class:`DecodeLimits()`), to pass as
    ``open_communicator(decoder=...)``. Raises :class:`~kiwitrio.DecodeError` on malformed
    input and on input over a limit."""
    return BoundedCborDecoder(limits)


_DEFAULT_DECODER = BoundedCborDecoder()


def cbor_decode(data: bytes) -> Any:
    """Decode CBOR bytes within the default :class:`DecodeLimits`.

    Raises :class:`~kiwitrio.DecodeError` on malformed input, and on input over a limit or
    with a CBOR tag that is not accepted (the error says which).
    """
    return _DEFAULT_DECODER(data)
