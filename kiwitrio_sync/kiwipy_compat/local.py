"""``kiwipy.local``: :class:`LocalCommunicator`, messaging within one process and no broker."""

from __future__ import annotations

import uuid
from typing import Any

from .._kiwipy import RmqThreadCommunicator

__all__ = ["LocalCommunicator"]


class LocalCommunicator(RmqThreadCommunicator):
    """kiwiPy's ``LocalCommunicator``: tasks, RPC and broadcasts among its own subscribers.

    Here it is a :class:`~kiwitrio_sync.RmqThreadCommunicator` on an in-memory broker of its
    own (``memory://``), with the same behaviour as on RabbitMQ: subscribers run in worker
    threads and messages are delivered asynchronously (kiwiPy's called subscribers in the
    sending thread, during the send). Takes :class:`~kiwitrio_sync.RmqThreadCommunicator`'s
    keyword options; pass ``url="memory://name"`` and a shared ``portal`` to let several
    communicators share one in-memory broker.
    """

    def __init__(self, *, url: str | None = None, **options: Any) -> None:
        super().__init__(url or f"memory://kiwipy-local-{uuid.uuid4().hex}", **options)
