"""Hostile message bodies: what an attacker with access to the broker can publish.

Each is a body that costs little on the wire and, decoded without limits, takes a
communicator down: an exception out of a message path, a frozen loop, or gigabytes of
memory. Shared by the decoder's unit tests, the hostile-input fault test and the
measurements in tests/faults/measure_hostile.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cbor2

M64 = (1 << 64) - 1
# CPython's tuple hash (xxHash-based, 3.8 and later): these constants and the rotation.
_P1, _P2, _P5 = 11400714785074694791, 14029467366897019727, 2870177450012600261


@dataclass(frozen=True)
class Payload:
    name: str
    body: bytes
    #: What decoding it without limits does.
    effect: str


def _head(major: int, value: int) -> bytes:
    if value < 24:
        return bytes([major << 5 | value])
    for info, width in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if value < 1 << (8 * width):
            return bytes([major << 5 | info]) + value.to_bytes(width, "big")
    raise ValueError(value)


def tag(number: int, content: bytes) -> bytes:
    return _head(6, number) + content


def array_of(count: int, item: bytes) -> bytes:
    return _head(4, count) + item * count


def shared_reference_graph(levels: int = 60) -> bytes:
    """An array whose last element has 2**levels leaves, from about 10 bytes per level:
    each level is a shared array (tag 28) of two references (tag 29) to the level before."""
    parts = [tag(28, _head(4, 1) + b"\x00")]
    for level in range(1, levels + 1):
        ref = tag(29, _head(0, level - 1))
        parts.append(tag(28, _head(4, 2) + ref + ref))
    return _head(4, len(parts)) + b"".join(parts)


def string_references(text_bytes: int = 64 * 1024, references: int = 100_000) -> bytes:
    """A string-reference namespace (tag 256): one long string, then references (tag 25)
    to it, each a copy when decoded: 365 KB for 6.4 GB."""
    text = _head(3, text_bytes) + b"x" * text_bytes
    ref = tag(25, _head(0, 0))
    return tag(256, _head(4, references + 1) + text + ref * references)


def colliding_tuple_keys(count: int) -> bytes:
    """A map of ``count`` keys, two-int tuples that all have the same hash: inserting each
    compares it with every key before it."""
    target = 0x1234567890ABCDEF
    final = 2 ^ _P5 ^ 3527539  # added for a tuple of length 2

    def rotl(x: int, r: int) -> int:
        return ((x << r) | (x >> (64 - r))) & M64

    def rotr(x: int, r: int) -> int:
        return ((x >> r) | (x << (64 - r))) & M64

    inv_p1, inv_p2 = pow(_P1, -1, 1 << 64), pow(_P2, -1, 1 << 64)
    wanted = rotr(((target - final) * inv_p1) & M64, 31)
    keys: list[tuple[int, int]] = []
    first = 0
    while len(keys) < count:
        first += 1
        acc = (rotl((_P5 + (hash(first) & M64) * _P2) & M64, 31) * _P1) & M64
        lane = ((wanted - acc) * inv_p2) & M64  # the hash the second element must have
        if lane < (1 << 61) - 1:
            second = lane
        elif lane >= (1 << 64) - ((1 << 61) - 1) and lane < M64 - 1:
            second = lane - (1 << 64)
        else:
            continue  # no int has that hash
        keys.append((first, second))
    return _head(5, count) + b"".join(cbor2.dumps(key) + b"\x00" for key in keys)


def envelope(body_cbor: bytes) -> bytes:
    """A broadcast envelope around an encoded body (so it is not refused for its shape)."""
    return (_head(5, 4) + cbor2.dumps("body") + body_cbor + cbor2.dumps("sender")
            + b"\xf6" + cbor2.dumps("subject") + b"\xf6" + cbor2.dumps("correlation_id")
            + b"\xf6")


def _builders(scale: float) -> dict[str, tuple[str, Callable[[], bytes]]]:
    def n(count: int) -> int:
        return max(1, int(count * scale))

    big = 1 << (8 * 2000)
    return {
        "bignum-2KB": ("repr() raises ValueError (int-to-str digit limit)",
                       lambda: cbor2.dumps(big)),
        "shared-refs-2^60": ("619 bytes, 2**60 leaves: any walk over it never ends",
                             lambda: shared_reference_graph(60)),
        "string-refs": ("365 KB, a copy of a 64 KiB string per reference: 6.4 GB",
                        lambda: string_references(64 * 1024, n(100_000))),
        "empty-maps": ("10 MB, 70-80 bytes of Python objects per byte",
                       lambda: array_of(n(10_000_000), b"\xa0")),
        "empty-lists": ("60 MB, 4 GB and seconds of a C call holding the GIL",
                        lambda: array_of(n(60_000_000), b"\x80")),
        "deep-nesting": ("100,000 levels", lambda: b"\x81" * 100_000 + b"\x00"),
        "declared-2^64-items": ("an array declaring 2**64-1 items",
                                lambda: b"\x9b" + b"\xff" * 8 + b"\x00"),
        "declared-2^64-bytes": ("a byte string declaring 2**64-1 bytes",
                                lambda: b"\x5b" + b"\xff" * 8 + b"\x00"),
        # Not scaled: it is the number of keys that hurts (and 5000 still fit in 70 KB).
        "hash-flood": ("70 KB map of tuple keys with equal hashes: quadratic insertion",
                       lambda: colliding_tuple_keys(5000)),
        "regex-tag": ("a regex compiled on arrival (and matched later)",
                      lambda: cbor2.dumps(cbor2.CBORTag(35, "(a+)+$"))),
        "bigfloat-tag": ("a bigfloat: Decimal power of an attacker's exponent",
                         lambda: cbor2.dumps(cbor2.CBORTag(5, [10**6, 3]))),
        "mime-tag": ("a MIME message parsed on arrival",
                     lambda: cbor2.dumps(cbor2.CBORTag(36, "Subject: x\n\nhi"))),
        "bignum-in-envelope": ("a well-formed envelope around an unprintable int",
                               lambda: envelope(cbor2.dumps(big))),
    }


def payload_names() -> list[str]:
    return list(_builders(1.0))


def payload(name: str, scale: float = 1.0) -> Payload:
    effect, build = _builders(scale)[name]
    return Payload(name, build(), effect)


def payloads(scale: float = 1.0) -> list[Payload]:
    """The set; ``scale`` shrinks the big ones (1.0: the sizes of issue 15)."""
    return [payload(name, scale) for name in payload_names()]
