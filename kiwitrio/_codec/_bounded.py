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



from typing import Any

import cbor2

from .._errors import DecodeError
from ._policy import _SET_TAG, FAST_PATH_BYTES, DecodeLimits, _TagPolicy
from ._scanner import _MAX_COST_PER_BYTE, _head, _Limited, _Scanned, _Scanner

__all__ = ["BoundedCborDecoder"]


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
