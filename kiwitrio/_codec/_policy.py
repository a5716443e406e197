"""What a body may cost (:class:`DecodeLimits`), which CBOR tags are accepted, and the tag
policy that enforces both inside cbor2."""


import datetime
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .._errors import DecodeError

__all__ = [
    "ACCEPTED_TAGS",
    "FAST_PATH_BYTES",
    "NAIVE_DATETIME_TAG",
    "SLICE_ITEMS",
    "_MAX_TAG_CONTENT_ITEMS",
    "_SET_TAG",
    "DecodeLimits",
    "_TagPolicy",
]


#: Bodies up to this size are decoded by cbor2 in one call (with the tag policy), if their map
#: keys and set elements are all text or byte strings.
FAST_PATH_BYTES = 64 * 1024
#: At most this many items are decoded by one call into cbor2's C decoder.
SLICE_ITEMS = 2048

# CBOR's standard datetime tags need a timezone. Naive datetimes travel under a tag of our
# own (from the first-come-first-served range) holding the ISO 8601 text, so they come back
# naive instead of silently gaining a timezone.
NAIVE_DATETIME_TAG = 27508

#: Tags the default decoder accepts, and why.
ACCEPTED_TAGS: Mapping[int, str] = {
    0: "date/time text (aware datetime)",
    1: "epoch date/time",
    2: "positive big integer (at most max_bignum_bytes)",
    3: "negative big integer (at most max_bignum_bytes)",
    4: "decimal fraction (Decimal)",
    37: "UUID",
    52: "IPv4 address or network",
    54: "IPv6 address or network",
    100: "date as days since the epoch",
    258: "set",
    260: "network address (IP address)",
    261: "network address with prefix (IP network)",
    1004: "date text (date)",
    43000: "complex number",
    NAIVE_DATETIME_TAG: "kiwitrio's naive datetime (ISO 8601 text)",
}
# The one tag whose content is a container the scanner may split (the others hold a few
# items). (Self-described CBOR, 55799, is refused: kiwitrio never sends it, and cbor2 decodes
# its content as immutable, which decoding in pieces would not reproduce.)
_SET_TAG = 258
#: Items inside an accepted tag other than a set or a self-description (a decimal fraction
#: holds at most [exponent, big integer mantissa]: four items).
_MAX_TAG_CONTENT_ITEMS = 8


@dataclass(frozen=True)
class DecodeLimits:
    """What one message body may cost the default CBOR decoder; see the module docstring.

    The defaults let through anything kiwitrio's encoder makes of a value up to the default
    ``max_message_size`` (64 MiB) except pathological shapes (millions of empty containers).
    """

    #: Containers and tags nested deeper than this are refused.
    max_depth: int = 200
    #: Estimated bytes of Python objects the decoded value may take (128 MiB: twice the
    #: default max_message_size of text or bytes; 1.5 million containers).
    max_decoded_size: int = 128 * 1024 * 1024
    #: Bytes of one big integer (tags 2 and 3).
    max_bignum_bytes: int = 1024
    #: Items inside map keys and set elements that are not plain scalars (tuples, big
    #: integers, UUIDs, frozensets...), summed over the body.
    max_key_items: int = 4096

    def __post_init__(self) -> None:
        # The pieces are put together recursively, one Python frame per level.
        if not 1 <= self.max_depth <= 500:
            raise ValueError(f"max_depth must be between 1 and 500, not {self.max_depth}")
        for name in ("max_decoded_size", "max_bignum_bytes", "max_key_items"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")



# -- the tag policy, for cbor2 ---------------------------------------------------------------

_Semantic = Callable[[Any, bool], Any]


class _TagPolicy(Mapping[int, _Semantic]):
    """cbor2's ``semantic_decoders``: consulted for every tag (cbor2 looks each one up).

    A KeyError lets cbor2's own decoder handle an accepted tag; everything else gets a
    function that refuses it (called after the tag's content is decoded: that content is
    bounded like any other, and a refused reference never expands).
    """

    def __init__(self, limits: DecodeLimits) -> None:
        self._limits = limits
        self._own: dict[int, _Semantic] = {
            2: self._positive_bignum,
            3: self._negative_bignum,
            NAIVE_DATETIME_TAG: _naive_datetime,
        }

    def __getitem__(self, tag: int) -> _Semantic:
        own = self._own.get(tag)
        if own is not None:
            return own
        if tag in ACCEPTED_TAGS:
            raise KeyError(tag)  # cbor2's decoder for it
        return _refuser(tag)

    def __iter__(self) -> Iterator[int]:
        return iter(self._own)

    def __len__(self) -> int:
        return len(self._own)

    def _bignum(self, value: Any) -> int:
        if not isinstance(value, bytes):
            raise DecodeError("a big integer must hold a byte string")
        if len(value) > self._limits.max_bignum_bytes:
            raise DecodeError(f"a big integer of {len(value)} bytes is larger than "
                              f"max_bignum_bytes ({self._limits.max_bignum_bytes})")
        return int.from_bytes(value, "big")

    def _positive_bignum(self, value: Any, _immutable: bool) -> int:
        return self._bignum(value)

    def _negative_bignum(self, value: Any, _immutable: bool) -> int:
        return -1 - self._bignum(value)


def _refuser(tag: int) -> _Semantic:
    def refuse(_value: Any, _immutable: bool) -> Any:
        raise DecodeError(f"CBOR tag {tag} is not accepted")

    return refuse


def _naive_datetime(value: Any, _immutable: bool) -> datetime.datetime:
    if not isinstance(value, str):
        raise DecodeError(f"CBOR tag {NAIVE_DATETIME_TAG} must hold text")
    return datetime.datetime.fromisoformat(value)


