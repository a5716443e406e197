"""Decoding CBOR from strangers: limits enforced while decoding, in bounded slices.

A message body is chosen by whoever can publish to the broker, and the decoded value is
built before any of kiwitrio's checks can look at it. So the default decoder bounds, *while
decoding*, what a body may cost:

- **Tags**: only the ones kiwitrio's encoder emits for the types it documents, plus a few
  cheap, fixed-size standard ones (:data:`ACCEPTED_TAGS`). Refused among others: shared
  references (28/29), which build graphs of 2**60 leaves from 600 bytes; string references
  (256/25), which copy a string for every reference (365 KB became 6.3 GB); bigfloats (5),
  whose exponent makes the value's cost unbounded; regexes (35), compiled on arrival; MIME
  messages (36), parsed on arrival; rationals (30); and any tag cbor2 does not interpret.
- **Big integers** (tags 2/3) of at most ``max_bignum_bytes`` bytes (1024: 2466 digits, so
  that ``str()`` of every decoded int works under Python's digit limit).
- **Nesting**: containers and tags at most ``max_depth`` deep.
- **Declared lengths**: an array, map or string may not declare more items or bytes than
  the rest of the body could hold.
- **Decoded size**: an estimate of the memory the decoded value takes (each item's Python
  object plus its slot in its container) may not exceed ``max_decoded_size``. One byte of
  CBOR can be an empty map, 70-80 bytes of Python objects.
- **Hash flooding**: map keys and set elements other than text, byte strings, small integers,
  floats and simple values (tuples, frozensets, big integers, UUIDs...) may hold at most
  ``max_key_items`` items in one body. Keys with equal hashes are easy to make from those
  (two-int tuples with colliding hashes are found by solving one equation), and each equal
  hash costs a comparison with every key before it: 5000 such keys (70 KB) took a second.

How: bodies up to :data:`FAST_PATH_BYTES` go straight to cbor2 (its C decoder), with a tag
policy that refuses what is not accepted and checks big integers, and cbor2's own nesting
limit; at that size nothing else can cost much. Larger bodies are first walked by a scanner
written here (iterative per container, linear in the body, never building values) that
enforces every limit above and notes where containers with more than :data:`SLICE_ITEMS`
items are; cbor2 then decodes pieces of at most that many items each and they are put
together here. cbor2's C decoder holds the GIL for as long as one call runs (4 million
empty lists: 3.8 s during which no other thread ran), so slicing is what keeps a large
body from stalling the Trio thread even when it is decoded in a worker thread.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import cbor2

from ._errors import DecodeError

__all__ = ["ACCEPTED_TAGS", "FAST_PATH_BYTES", "SLICE_ITEMS", "BoundedCborDecoder",
           "DecodeLimits"]

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


# -- the scanner -----------------------------------------------------------------------------

# Estimated memory of decoded values (CPython, 64 bits); every item also takes a slot of
# _SLOT bytes in its container. Overestimates are fine: this is a budget, not an account.
_SLOT = 8
_INT = 32
_FLOAT = 24
_BYTES = 33
_STR = 49
_LIST = 72
_DICT = 104
_PER_MAP_PAIR = 48
_SET = 216
_PER_SET_ITEM = 32
_TAG = 56

_BREAK = 0xFF
#: The most a byte of CBOR can cost in this estimate: an empty map.
_MAX_COST_PER_BYTE = _SLOT + _DICT


def _inline_items() -> tuple[list[int], list[int]]:
    """For every initial byte of an item the scanner steps over inline (integers, floats,
    simple values, text and byte strings shorter than 24 bytes, empty arrays and maps): the
    item's size in bytes
    and its estimated cost; 0 and 0 for every other initial byte."""
    sizes, costs = [0] * 256, [0] * 256
    for initial in range(256):
        major, info = initial >> 5, initial & 0x1F
        if info > 27:
            continue
        width = 0 if info < 24 else 1 << (info - 24)
        if major <= 1:
            sizes[initial] = 1 + width
            # Small ints are shared objects in CPython; the others take an object each.
            costs[initial] = _SLOT + (_INT if info > 24 else 0)
        elif major == 7:
            sizes[initial] = 1 + width
            costs[initial] = _SLOT + (_FLOAT if info >= 25 else 0)
        elif major in (2, 3) and info < 24:
            sizes[initial] = 1 + info
            # Up to 23 bytes of text: up to 4 bytes per character, 92 at most.
            costs[initial] = _SLOT + (_BYTES + info if major == 2 else _STR + 4 * info)
    # Empty containers (a flood of them is the cheapest amplification there is).
    sizes[0x80], costs[0x80] = 1, _SLOT + _LIST
    sizes[0xA0], costs[0xA0] = 1, _SLOT + _DICT
    return sizes, costs


_INLINE_SIZE, _INLINE_COST = _inline_items()
_NOTHING_INLINE = [0] * 256


def _short_leaf(data: bytes, pos: int, initial: int) -> tuple[int, int, int] | None:
    """A short array or map (at most 23 children) of items that are all stepped over inline
    (a record like ``{"id": 7, "name": "x"}``, a pair like ``[7, "x"]``): its end, number
    of items and cost, without a call per level; ``None`` if it is anything else.

    Most containers of real messages are such leaves, and calls are what the scanner's time
    goes on. ``initial`` is 0x81-0x97 (array) or 0xA1-0xB7 (map).
    """
    sizes = _INLINE_SIZE
    if initial < 0xA0:
        children, cost = initial - 0x80, _SLOT + _LIST
    else:
        children, cost = 2 * (initial - 0xA0), _SLOT + _DICT + (initial - 0xA0) * _PER_MAP_PAIR
    end = pos + 1
    costs = _INLINE_COST
    for _ in range(children):
        child = data[end]
        width = sizes[child]
        if not width:
            return None
        end += width
        cost += costs[child]
    return end, children + 1, cost


class _Scanned:
    """A container too large to decode in one go: how to decode it piece by piece.

    ``pieces`` holds, in order: runs ``(start, end, count)`` of consecutive children (for a
    map, of whole key/value pairs) that cbor2 can decode together, and single large
    children (for a map, ``(key_start, key_end, value)`` with the large value).
    """

    __slots__ = ("kind", "pieces")

    def __init__(self, kind: int) -> None:
        self.kind = kind  # 4 (array), 5 (map) or _SET_TAG
        self.pieces: list[Any] = []


class _Limited(Exception):
    """Internal: a limit was hit or the structure is malformed (becomes a DecodeError)."""


_Scan = tuple[int, int, "_Scanned | None"]


class _Scanner:
    """Walks one body, checking every limit, without building any value.

    One Python call per container (and per tag or non-trivial key), not per item: fixed-size
    scalars and short strings, which are most items, are stepped over inline in the loops
    of :meth:`_array` and :meth:`_map`. The estimated cost is kept in ``self.cost`` between
    calls and in a local inside a loop.
    """

    def __init__(self, data: bytes, limits: DecodeLimits) -> None:
        self.data = data
        self.size = len(data)
        self.limits = limits
        self.budget = limits.max_decoded_size
        self.cost = 0
        self.key_items = 0

    # Each scanning method returns (end offset, number of items, _Scanned or None).
    # ``key``: 0 for a value, 1 for a map key or set element, 2 for anything inside one.
    # ``split``: whether a large container here may be decoded in pieces.
    def item(self, pos: int, depth: int, key: int, split: bool) -> _Scan:
        data = self.data
        if pos >= self.size:
            raise _Limited("truncated")
        initial = data[pos]
        major = initial >> 5
        if key == 2 or (key == 1 and 4 <= major <= 6):
            self._count_key_item()
        size = _INLINE_SIZE[initial]
        if size:
            self._spend(_INLINE_COST[initial])
            return pos + size, 1, None
        pos, arg = self._argument(pos, initial & 0x1F)
        if major == 2 or major == 3:
            return self._string(pos, major, arg), 1, None
        if major == 7:
            raise _Limited("an unexpected break")
        if major <= 1:
            raise _Limited("an integer of indefinite length")
        if depth >= self.limits.max_depth:
            raise _Limited(f"nested deeper than max_depth ({self.limits.max_depth})")
        if major == 4:
            return self._array(pos, arg, depth + 1, 2 if key else 0, split)
        if major == 5:
            return self._map(pos, arg, depth + 1, 2 if key else 0, split)
        return self._tag(pos, arg, depth + 1, key, split)

    def _count_key_item(self) -> None:
        self.key_items += 1
        if self.key_items > self.limits.max_key_items:
            raise _Limited(f"more than max_key_items ({self.limits.max_key_items}) items in "
                           "map keys and set elements that are not plain scalars")

    def _argument(self, pos: int, info: int) -> tuple[int, int]:
        """The head's argument; -1 for an indefinite length. Returns (next offset, arg)."""
        if info < 24:
            return pos + 1, info
        if info == 31:
            return pos + 1, -1
        if info > 27:
            raise _Limited(f"malformed head (additional information {info})")
        width = 1 << (info - 24)
        end = pos + 1 + width
        if end > self.size:
            raise _Limited("truncated")
        return end, int.from_bytes(self.data[pos + 1:end], "big")

    def _spend(self, amount: int) -> None:
        self.cost += amount
        if self.cost > self.budget:
            raise self._over_budget()

    def _over_budget(self) -> _Limited:
        return _Limited(f"the decoded value would take more than max_decoded_size "
                        f"({self.budget} bytes)")

    def _string(self, pos: int, major: int, length: int) -> int:
        if length >= 0:
            return self._chunk(pos, major, length)
        # Indefinite length: definite chunks of the same major type up to a break.
        data = self.data
        while True:
            if pos >= self.size:
                raise _Limited("truncated")
            initial = data[pos]
            if initial == _BREAK:
                return pos + 1
            if initial >> 5 != major or initial & 0x1F == 31:
                raise _Limited("a malformed chunk in an indefinite-length string")
            pos, length = self._argument(pos, initial & 0x1F)
            pos = self._chunk(pos, major, length)

    def _chunk(self, pos: int, major: int, length: int) -> int:
        end = pos + length
        if end > self.size:
            raise _Limited(f"a string declares {length} bytes, more than the "
                           f"{self.size - pos} left")
        if major == 2:
            self._spend(_SLOT + _BYTES + length)
        else:
            # A str of non-ASCII text takes up to 4 bytes per character.
            ascii_text = length < 16 or self.data[pos:end].isascii()
            self._spend(_SLOT + _STR + (length if ascii_text else 4 * length))
        return end

    def _check_count(self, pos: int, count: int, per_item: int) -> None:
        if count >= 0 and count * per_item > self.size - pos:
            raise _Limited(f"a container declares {count} items, more than the "
                           f"{self.size - pos} bytes left could hold")

    def _array(self, pos: int, count: int, depth: int, key: int, split: bool,
               as_set: bool = False) -> _Scan:
        self._check_count(pos, count, 1)
        self._spend(_SLOT + (_SET if as_set else _LIST))
        kind = _SET_TAG if as_set else 4
        # Set elements are hashed, like map keys.
        child_key = 1 if as_set and not key else key
        split = split and not key
        per_child = _PER_SET_ITEM if as_set else 0
        # Items inside a composite key are counted one by one (never inline).
        inline_size = _INLINE_SIZE if child_key != 2 else _NOTHING_INLINE
        inline_cost = _INLINE_COST
        # Children are grouped into runs of at most SLICE_ITEMS items (only if split).
        limit = SLICE_ITEMS if split else -1
        node: _Scanned | None = None
        run_start = run_end = pos
        run_count = run_items = 0
        items = 1
        data, budget, cost = self.data, self.budget, self.cost
        max_depth = self.limits.max_depth
        index = 0
        while index != count:
            initial = data[pos]  # IndexError past the end: truncated
            if initial == _BREAK and count < 0:
                pos += 1
                break
            index += 1
            start = pos
            width = inline_size[initial]
            leaf = None
            if width:
                pos += width
                cost += inline_cost[initial] + per_child
                n: int = 1
                child: _Scanned | None = None
                if cost > budget:
                    raise self._over_budget()
            elif (child_key == 0 and (0x81 <= initial <= 0x97 or 0xA1 <= initial <= 0xB7)
                    and depth < max_depth
                    and (leaf := _short_leaf(data, pos, initial)) is not None):
                pos, n, leaf_cost = leaf
                cost += leaf_cost
                child = None
                if cost > budget:
                    raise self._over_budget()
            else:
                self.cost = cost + per_child
                pos, n, child = self.item(pos, depth, child_key, split)
                cost = self.cost
            items += n
            if limit < 0:
                continue
            if child is None:
                if run_count and run_items + n > limit:
                    node = node or _Scanned(kind)
                    node.pieces.append((run_start, run_end, run_count))
                    run_count = run_items = 0
                if not run_count:
                    run_start = start
                run_count += 1
                run_items += n
                run_end = pos
            else:
                node = node or _Scanned(kind)
                if run_count:
                    node.pieces.append((run_start, run_end, run_count))
                    run_count = run_items = 0
                node.pieces.append(child)
        self.cost = cost
        if pos > self.size:
            raise _Limited("truncated")
        if limit < 0 or items <= SLICE_ITEMS:
            return pos, items, None
        node = node or _Scanned(kind)
        if run_count:
            node.pieces.append((run_start, run_end, run_count))
        return pos, items, node

    def _map(self, pos: int, count: int, depth: int, key: int, split: bool) -> _Scan:
        self._check_count(pos, count, 2)
        self._spend(_SLOT + _DICT)
        split = split and not key
        limit = SLICE_ITEMS if split else -1
        key_ctx = key or 1
        # Plain scalar keys are not counted against max_key_items; keys and values inside
        # a composite key are, one by one.
        key_inline = _INLINE_SIZE if key_ctx == 1 else _NOTHING_INLINE
        value_inline = _INLINE_SIZE if key != 2 else _NOTHING_INLINE
        inline_cost = _INLINE_COST
        node: _Scanned | None = None
        run_start = run_end = pos
        run_count = run_items = 0
        items = 1
        data, budget, cost = self.data, self.budget, self.cost
        max_depth = self.limits.max_depth
        index = 0
        while index != count:
            initial = data[pos]  # IndexError past the end: truncated
            if initial == _BREAK and count < 0:
                pos += 1
                break
            index += 1
            start = pos
            # The key is never split: keys are bounded by max_key_items.
            width = key_inline[initial]
            if width:
                pos += width
                cost += inline_cost[initial] + _PER_MAP_PAIR
                key_n = 1
            else:
                self.cost = cost + _PER_MAP_PAIR
                pos, key_n, _ = self.item(pos, depth, key_ctx, False)
                cost = self.cost
            key_end = pos
            initial = data[pos]
            width = value_inline[initial]
            leaf = None
            if width:
                pos += width
                cost += inline_cost[initial]
                n: int = key_n + 1
                child: _Scanned | None = None
                if cost > budget:
                    raise self._over_budget()
            elif (key == 0 and (0x81 <= initial <= 0x97 or 0xA1 <= initial <= 0xB7)
                    and depth < max_depth
                    and (leaf := _short_leaf(data, pos, initial)) is not None):
                pos, leaf_n, leaf_cost = leaf
                n = key_n + leaf_n
                cost += leaf_cost
                child = None
                if cost > budget:
                    raise self._over_budget()
            else:
                self.cost = cost
                pos, n, child = self.item(pos, depth, key, split)
                cost = self.cost
                n += key_n
            items += n
            if limit < 0:
                continue
            if child is None:
                if run_count and run_items + n > limit:
                    node = node or _Scanned(5)
                    node.pieces.append((run_start, run_end, run_count))
                    run_count = run_items = 0
                if not run_count:
                    run_start = start
                run_count += 1
                run_items += n
                run_end = pos
            else:
                node = node or _Scanned(5)
                if run_count:
                    node.pieces.append((run_start, run_end, run_count))
                    run_count = run_items = 0
                node.pieces.append((start, key_end, child))
        self.cost = cost
        if pos > self.size:
            raise _Limited("truncated")
        if limit < 0 or items <= SLICE_ITEMS:
            return pos, items, None
        node = node or _Scanned(5)
        if run_count:
            node.pieces.append((run_start, run_end, run_count))
        return pos, items, node

    def _tag(self, pos: int, tag: int, depth: int, key: int, split: bool) -> _Scan:
        if tag < 0:
            raise _Limited("a tag of indefinite length")
        if tag not in ACCEPTED_TAGS:
            raise _Limited(f"CBOR tag {tag} is not accepted")
        self._spend(_SLOT + _TAG)
        inner_key = 2 if key else 0
        if tag == _SET_TAG:
            if pos >= self.size:
                raise _Limited("truncated")
            initial = self.data[pos]
            if initial >> 5 != 4:
                raise _Limited("a set must hold an array")
            pos, count = self._argument(pos, initial & 0x1F)
            if depth >= self.limits.max_depth:
                raise _Limited(f"nested deeper than max_depth ({self.limits.max_depth})")
            end, n, node = self._array(pos, count, depth + 1, inner_key, split, as_set=True)
            return end, n + 1, node
        if tag in (2, 3):
            if pos >= self.size or self.data[pos] >> 5 != 2:
                raise _Limited("a big integer must hold a byte string")
            before = self.cost
            end, n, _ = self.item(pos, depth, inner_key, False)
            # What its chunks cost, less one head: about its length (more for many chunks).
            length = self.cost - before - _SLOT - _BYTES
            if length > self.limits.max_bignum_bytes:
                raise _Limited(f"a big integer of {length} bytes is larger than "
                               f"max_bignum_bytes ({self.limits.max_bignum_bytes})")
            return end, n + 1, None
        end, n, _ = self.item(pos, depth, inner_key, False)
        if n > _MAX_TAG_CONTENT_ITEMS:
            raise _Limited(f"CBOR tag {tag} holds {n} items")
        return end, n + 1, None


def _head(major: int, value: int) -> bytes:
    if value < 24:
        return bytes([major << 5 | value])
    for info, width in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if value < 1 << (8 * width):
            return bytes([major << 5 | info]) + value.to_bytes(width, "big")
    raise AssertionError("unreachable: counts fit in 64 bits")


# -- decoding --------------------------------------------------------------------------------

class BoundedCborDecoder:
    """A CBOR decoder that enforces :class:`DecodeLimits` (``decoder(data) -> value``).

    Raises :class:`~kiwitrio.DecodeError` for malformed input and for input over a limit,
    saying which (never quoting the input).
    """

    def __init__(self, limits: DecodeLimits | None = None) -> None:
        self.limits = limits if limits is not None else DecodeLimits()
        self._policy = _TagPolicy(self.limits)

    @property
    def _fast_path_bytes(self) -> int:
        # Straight to cbor2 only where even the worst case (all empty maps) fits the budget.
        return min(FAST_PATH_BYTES, self.limits.max_decoded_size // _MAX_COST_PER_BYTE)

    def __repr__(self) -> str:
        return f"BoundedCborDecoder({self.limits!r})"

    def __call__(self, data: bytes) -> Any:
        try:
            if len(data) <= self._fast_path_bytes:
                try:
                    # Keys and set elements only of text or bytes: their hashes are salted,
                    # so no flooding; what else could go wrong is bounded by the size.
                    return self._loads(data, strict=True)
                except cbor2.CBORDecodeError as exc:
                    if _refusal_in(exc) is not None:
                        raise
                    # Other keys (or malformed input): the scanner decides.
            return self._decode_scanned(data)
        except DecodeError:
            raise
        except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError,
                RecursionError, MemoryError) as exc:
            refused = _refusal_in(exc)
            if refused is not None:
                raise DecodeError(f"refused CBOR message ({len(data)} bytes): "
                                  f"{refused}") from None
            raise DecodeError(f"malformed CBOR message ({len(data)} bytes): {exc}") from exc

    def _decode_scanned(self, data: bytes) -> Any:
        scanner = _Scanner(data, self.limits)
        try:
            end, _, node = scanner.item(0, 0, 0, True)
            if end > len(data):
                raise _Limited("truncated")
        except IndexError:
            raise DecodeError(f"malformed CBOR message ({len(data)} bytes): "
                              "truncated") from None
        except _Limited as exc:
            raise DecodeError(f"refused CBOR message ({len(data)} bytes): {exc}") from None
        if node is None:
            return self._loads(data)
        return self._assemble(data, node)

    def _loads(self, data: bytes, *, immutable: bool = False, slack: int = 0,
               strict: bool = False) -> Any:
        # For a piece of a large body, the scanner has checked the nesting already; cbor2's
        # limit is then a backstop, with room for the head a piece is given.
        return cbor2.loads(data, semantic_decoders=self._policy,
                           max_depth=self.limits.max_depth + slack, immutable=immutable,
                           strict_hashable_types=strict)

    def _assemble(self, data: bytes, node: _Scanned) -> Any:
        if node.kind == 5:
            mapping: dict[Any, Any] = {}
            for piece in node.pieces:
                if isinstance(piece[-1], _Scanned):
                    key_start, key_end, value = piece
                    key = self._loads(data[key_start:key_end], immutable=True, slack=2)
                    mapping[key] = self._assemble(data, value)
                else:
                    start, end, count = piece
                    mapping.update(self._loads(_head(5, count) + data[start:end], slack=2))
            return mapping
        if node.kind == _SET_TAG:
            elements: set[Any] = set()
            for piece in node.pieces:
                # Set elements are in key position: never large, so every piece is a run.
                start, end, count = piece
                elements.update(self._loads(
                    _head(6, _SET_TAG) + _head(4, count) + data[start:end], slack=2))
            return elements
        items: list[Any] = []
        for piece in node.pieces:
            if isinstance(piece, _Scanned):
                items.append(self._assemble(data, piece))
            else:
                start, end, count = piece
                items.extend(self._loads(_head(4, count) + data[start:end], slack=2))
        return items


def _refusal_in(exc: BaseException) -> DecodeError | None:
    """cbor2 wraps what a semantic decoder raised ("error decoding semantic tag N"): the
    DecodeError of the tag policy, found in the chain of causes."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, DecodeError):
            return exc
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
        seen += 1
    return None
