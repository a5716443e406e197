"""``kiwipy.rmq.communicator``: kiwiPy's asyncio communicator, by name only."""

from __future__ import annotations

from typing import Any

from ._unavailable import AsyncioOnly, unavailable

__all__ = ["RmqCommunicator", "async_connect"]


class RmqCommunicator(AsyncioOnly):
    """kiwiPy's asyncio communicator: not provided (constructing one raises
    :class:`NotImplementedError`)."""


async def async_connect(*args: Any, **kwargs: Any) -> RmqCommunicator:
    """kiwiPy's asyncio ``async_connect``: not provided (raises
    :class:`NotImplementedError`)."""
    unavailable("async_connect")
