"""``kiwipy.communicate``: :func:`connect` from a URI."""

from __future__ import annotations

from typing import Any

from .._kiwipy import RmqThreadCommunicator

__all__ = ["connect"]

DEFAULT_COMM_URI = "amqp://guest:guest@127.0.0.1/"


def connect(uri: str = DEFAULT_COMM_URI, **kwargs: Any) -> RmqThreadCommunicator:
    """A connected :class:`~kiwitrio_sync.RmqThreadCommunicator` for an ``amqp://`` (or
    ``amqps://``, or kiwitrio's ``memory://``) URI; ``kwargs`` as for its ``connect``."""
    if uri.startswith(("amqp", "memory:")):
        return RmqThreadCommunicator.connect(connection_params=uri, **kwargs)
    raise ValueError(f"unknown communicator URI {uri!r}")
