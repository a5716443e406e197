"""kiwiPy's ``RmqThreadCommunicator`` spelling, for code that moves over from kiwiPy."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

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
            url = _url_from_params(connection_params)
        else:
            url = connection_params or kiwitrio.DEFAULT_URL
        for name in _IGNORED_OPTIONS:
            if options.pop(name, None) is not None:
                logger.info("kiwitrio_sync ignores kiwiPy's %s option", name)
        return cls(url, portal=portal, **options)


def _url_from_params(params: Mapping[str, Any]) -> str:
    """An AMQP URL from kiwiPy/aio-pika style connection parameters.

    ``url`` wins; otherwise ``host``, ``port``, ``login`` (or ``username``), ``password`` and
    ``virtualhost`` (aio-pika's names) build one. Unknown keys are refused rather than
    ignored, so that a typo cannot connect somewhere unexpected.
    """
    if "url" in params:
        return str(params["url"])
    known = {"host", "port", "login", "username", "password", "virtualhost", "vhost"}
    unknown = set(params) - known
    if unknown:
        raise ValueError(f"unsupported connection parameters: {sorted(unknown)}")
    user = quote(str(params.get("login", params.get("username", "guest"))), safe="")
    password = quote(str(params.get("password", "guest")), safe="")
    host = params.get("host", "127.0.0.1")
    port = int(params.get("port", 5672))
    vhost = quote(str(params.get("virtualhost", params.get("vhost", "/"))), safe="")
    return f"amqp://{user}:{password}@{host}:{port}/{'' if vhost == '%2F' else vhost}"
