"""The scanner: walks a large body once, enforcing every limit without building values, and
notes where its big containers can be cut into pieces for cbor2."""


from typing import Any

from ._policy import _MAX_TAG_CONTENT_ITEMS, _SET_TAG, ACCEPTED_TAGS, SLICE_ITEMS, DecodeLimits

__all__ = ["_Limited", "_Scanned", "_Scanner", "_head"]


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
    scalars and short strings, which are most items, are stepped over inline in the loop
    of :meth:`_children`. The estimated cost is kept in ``self.cost`` between
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
        # Set elements are hashed, like map keys.
        child_key = 1 if as_set and not key else key
        return self._children(
            pos, count, depth, split and not key, _SET_TAG if as_set else 4,
            key_ctx=0, value_key=child_key, per_value=_PER_SET_ITEM if as_set else 0)

    def _map(self, pos: int, count: int, depth: int, key: int, split: bool) -> _Scan:
        self._check_count(pos, count, 2)
        self._spend(_SLOT + _DICT)
        return self._children(pos, count, depth, split and not key, 5,
                              key_ctx=key or 1, value_key=key, per_value=0)

    def _children(self, pos: int, count: int, depth: int, split: bool, kind: int, *,
                  key_ctx: int, value_key: int, per_value: int) -> _Scan:
        """The ``count`` children of an array, set (``key_ctx`` 0) or map (each child a
        key/value pair; ``key_ctx`` is the keys' ``key``), the values scanned with
        ``value_key``; ``per_value`` is added to the cost of each value."""
        # Plain scalar keys are not counted against max_key_items; items inside a
        # composite key are, one by one (never stepped over inline).
        key_inline = _INLINE_SIZE if key_ctx == 1 else _NOTHING_INLINE
        value_inline = _INLINE_SIZE if value_key != 2 else _NOTHING_INLINE
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
            start = key_end = pos
            key_n = 0
            if key_ctx:
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
                cost += inline_cost[initial] + per_value
                n: int = key_n + 1
                child: _Scanned | None = None
                if cost > budget:
                    raise self._over_budget()
            elif (value_key == 0 and (0x81 <= initial <= 0x97 or 0xA1 <= initial <= 0xB7)
                    and depth < max_depth
                    and (leaf := _short_leaf(data, pos, initial)) is not None):
                pos, leaf_n, leaf_cost = leaf
                n = key_n + leaf_n
                cost += leaf_cost
                child = None
                if cost > budget:
                    raise self._over_budget()
            else:
                self.cost = cost + per_value
                pos, n, child = self.item(pos, depth, value_key, split)
                cost = self.cost
                n += key_n
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
                node.pieces.append((start, key_end, child) if key_ctx else child)
        self.cost = cost
        if pos > self.size:
            raise _Limited("truncated")
        if limit < 0 or items <= SLICE_ITEMS:
            return pos, items, None
        node = node or _Scanned(kind)
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


