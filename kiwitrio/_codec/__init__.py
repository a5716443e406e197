"""The codec layer: message bodies to values and back.

- :mod:`._cbor`: the default encoder and decoder (CBOR), and the Encoder/Decoder types;
- :mod:`._bounded`: the decoder for bodies from strangers, limits enforced while decoding;
- :mod:`._policy`: :class:`DecodeLimits`, the accepted tags, the tag policy;
- :mod:`._scanner`: the walk over large bodies that enforces the limits and plans slices.
"""

from ._bounded import BoundedCborDecoder
from ._cbor import (
    CBOR_CONTENT_TYPE,
    Decoder,
    Encoder,
    cbor_decode,
    cbor_decoder,
    cbor_encode,
)
from ._policy import ACCEPTED_TAGS, FAST_PATH_BYTES, NAIVE_DATETIME_TAG, SLICE_ITEMS, DecodeLimits

__all__ = [
    "ACCEPTED_TAGS",
    "CBOR_CONTENT_TYPE",
    "FAST_PATH_BYTES",
    "NAIVE_DATETIME_TAG",
    "SLICE_ITEMS",
    "BoundedCborDecoder",
    "DecodeLimits",
    "Decoder",
    "Encoder",
    "cbor_decode",
    "cbor_decoder",
    "cbor_encode",
]
