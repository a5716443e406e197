"""Identifiers for messages (correlation ids, task ids), cheap enough for every send.

``uuid.uuid4()`` reads ``os.urandom`` for each id, and that call releases the GIL. With the
thread bridge, the asyncio thread then takes the GIL, and the Trio thread waits for it to come
back (up to the interpreter's switch interval, 5 ms): the profile of confirmed publishes put
18% of the Trio thread's wall time in ``urandom``. These ids come from a private generator
seeded from ``os.urandom`` instead, which never releases the GIL. They identify messages; they
are not secrets (whoever can read the queues sees them anyway), so a non-cryptographic
generator is enough; they have uuid4's form (32 hex digits, version 4, RFC 4122 variant).
"""

from __future__ import annotations

import os
import random

__all__ = ["new_id"]

# Private: code that calls random.seed(n) (tests often do) must not make two processes
# hand out the same ids.
_generator = random.Random()  # seeded from os.urandom
if hasattr(os, "register_at_fork"):
    # A forked child would otherwise repeat its parent's ids.
    os.register_at_fork(after_in_child=_generator.seed)

_VERSION_MASK = ~((0xF000 << 64) | (0xC000 << 48))
_VERSION_4 = (0x4000 << 64) | (0x8000 << 48)


def new_id() -> str:
    """A fresh id of uuid4's form: 32 lowercase hex digits."""
    return f"{(_generator.getrandbits(128) & _VERSION_MASK) | _VERSION_4:032x}"
