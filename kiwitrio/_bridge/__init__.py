"""Where Trio meets asyncio: one interface, two implementations, and the choice between them.

aio-pika is an asyncio library; kiwitrio's core is Trio. The AMQP backend reaches aio-pika
only through an :class:`AsyncioBridge` (``_base.py`` states its three crossings), made by
:func:`open_bridge`:

``"thread"`` (``_thread.py``)
    a private asyncio loop in a thread of its own. Public asyncio and Trio APIs only,
    nothing process-wide patched, every supported Python. Crossings are batched.
``"trio-asyncio"`` (``_trio_asyncio.py``)
    trio-asyncio's loop inside the Trio run, in the same thread. No thread switch per
    crossing, but importing trio_asyncio repoints asyncio's loop functions for the whole
    process, and it does not import on Python 3.14+.

``"auto"`` (the default) picks by :func:`default_bridge`: the thread bridge, unless the
program already imported trio_asyncio itself (then asyncio is trio-asyncio's anyway, and
the same-thread bridge is both safe and measured faster there). ``KIWITRIO_BRIDGE`` in the
environment replaces ``"auto"`` (for running a whole test suite on one bridge).
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal, get_args

from ._base import (
    AsyncioBridge,
    AsyncioOperationAborted,
    block_process_signals,
    process_signals_unblocked,
)
from ._thread import ThreadBridge, open_thread_bridge

__all__ = [
    "BRIDGE_ENV",
    "AsyncioBridge",
    "AsyncioOperationAborted",
    "BridgeChoice",
    "ThreadBridge",
    "block_process_signals",
    "default_bridge",
    "open_bridge",
    "process_signals_unblocked",
    "resolve_bridge",
    "trio_asyncio_unavailable",
]

BridgeChoice = Literal["auto", "thread", "trio-asyncio"]
_CHOICES: tuple[str, ...] = get_args(BridgeChoice)

#: Environment variable that, when set, stands in for ``bridge="auto"``.
BRIDGE_ENV = "KIWITRIO_BRIDGE"


def trio_asyncio_unavailable() -> str | None:
    """None if the trio-asyncio bridge can run here, else why not (without importing it)."""
    if sys.version_info >= (3, 14):
        return "trio-asyncio 0.16 does not support Python 3.14 and later (trio-asyncio #160)"
    if "trio_asyncio" in sys.modules:
        return None
    import importlib.util

    if importlib.util.find_spec("trio_asyncio") is None:
        return "trio-asyncio is not installed (pip install trio-asyncio)"
    return None


def default_bridge() -> Literal["thread", "trio-asyncio"]:
    """The bridge ``"auto"`` stands for in this process, now."""
    if "trio_asyncio" in sys.modules and trio_asyncio_unavailable() is None:
        return "trio-asyncio"
    return "thread"


def resolve_bridge(choice: str) -> Literal["thread", "trio-asyncio"]:
    """Turn a ``bridge=`` option into the bridge to use; ``ValueError`` if it cannot be had."""
    if choice not in _CHOICES:
        raise ValueError(f"bridge must be one of {', '.join(map(repr, _CHOICES))}, not {choice!r}")
    if choice == "auto":
        from_env = os.environ.get(BRIDGE_ENV, "auto")
        if from_env not in _CHOICES:
            raise ValueError(f"{BRIDGE_ENV}={from_env!r} is not one of "
                             f"{', '.join(map(repr, _CHOICES))}")
        choice = from_env
    if choice == "auto":
        return default_bridge()
    if choice == "trio-asyncio":
        reason = trio_asyncio_unavailable()
        if reason is not None:
            raise ValueError(f"bridge='trio-asyncio' cannot be used: {reason}")
        return "trio-asyncio"
    return "thread"


@asynccontextmanager
async def open_bridge(choice: str = "auto") -> AsyncIterator[AsyncioBridge]:
    """Open the bridge ``choice`` stands for (see :func:`resolve_bridge`) for the block."""
    if resolve_bridge(choice) == "trio-asyncio":
        # Imported here, not at the top: importing trio_asyncio patches asyncio process-wide.
        from ._trio_asyncio import open_trio_asyncio_bridge

        async with open_trio_asyncio_bridge() as same_thread:
            yield same_thread
    else:
        async with open_thread_bridge() as thread:
            yield thread
