"""kiwiPy's ``RmqThreadCommunicator`` spelling, for code that moves over from kiwiPy."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kiwitrio

from ._communicator import Communicator
from ._portal import Portal

__all__ = ["RmqThreadCommunicator"]

logger = logging.getLogger(__name__)

# kiwiPy options that have no counterpart here; accepted so that calls keep working.
_IGNORED_OPTIONS = ("connection_factory", "queue_expires", "task_prefetch_size",
                    "async_task_timeout")


class RmqThreadCommunicator(Communicator):
    """:class:`Communicator` under kiwiPy's name, with kiwiPy's :meth:`connect`."""

    @classmethod
    def connect(
        cls,
        connection_params: str | Mapping[str, Any] | None = None,
        *,
        portal: Portal | None = None,
        **options: Any,
    ) -> RmqThreadCommunicator:
        """Connect like kiwiPy: ``connection_params`` is a URL or ``{"url": ...}``."""
        if isinstance(connection_params, Mapping):
            url = str(connection_params.get("url", kiwitrio.DEFAULT_URL))
        else:
            url = connection_params or kiwitrio.DEFAULT_URL
        for name in _IGNORED_OPTIONS:
            if options.pop(name, None) is not None:
                logger.info("kiwitrio_sync ignores kiwiPy's %s option", name)
        return cls(url, portal=portal, **options)
