"""The backend factory: a :class:`Session` for a broker URL.

``memory://`` gives the in-process broker, ``sqlite:///abs/path.db`` the one in a file that
the processes of one host share; ``amqp://`` and ``amqps://`` give RabbitMQ, through
a :class:`~kiwitrio.backends.ResilientSession` when there is a reconnect policy. The backends'
modules are imported on first use, so that a program on ``memory://`` or ``sqlite://`` never
imports aio-pika.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from .._urls import check_broker_scheme, check_broker_url
from ._base import Session
from ._policy import ConnectionState, ReconnectPolicy
from ._reconnect import open_resilient_session

__all__ = ["DEFAULT_CONNECT_TIMEOUT", "open_session"]

#: Without a reconnect policy, connecting (TCP, TLS, AMQP handshake) may take this long.
DEFAULT_CONNECT_TIMEOUT = ReconnectPolicy().connect_timeout


@asynccontextmanager
async def open_session(
    url: str | Sequence[str],
    *,
    heartbeat: float,
    reconnect: ReconnectPolicy | None = None,
    on_state: Callable[[ConnectionState], None] | None = None,
    bridge: str = "auto",
) -> AsyncIterator[Session]:
    """Connect to ``url`` (or the first of several that answers) and yield the session;
    closes it when the block is left.

    ``heartbeat`` (seconds; 0: none) is AMQP's; ``reconnect`` (``None``: a lost connection
    stays lost) is the policy of a :class:`~kiwitrio.backends.ResilientSession`, whose state
    changes go to ``on_state``; ``bridge`` chooses how aio-pika's asyncio runs (``"auto"``,
    ``"thread"``, ``"trio-asyncio"``). Raises :class:`ValueError` for a URL it cannot use and
    :class:`~kiwitrio.ConnectionFailed` if no broker answers.
    """
    urls = [url] if isinstance(url, str) else list(url)
    if not urls:
        raise ValueError("no broker URL given")
    if all(u.startswith("memory:") for u in urls):
        from ._memory import open_memory_session

        async with open_memory_session(urls[0]) as session:
            yield session
        return
    if all(u.startswith("sqlite:") for u in urls) and len(urls) == 1:
        async with _open_sqlite(urls[0], reconnect, on_state) as session:
            yield session
        return
    for one_url in urls:
        check_broker_scheme(one_url)
        for local in ("memory:", "sqlite:"):
            if one_url.startswith(local):
                raise ValueError(f"{local}// cannot be mixed with other broker URLs")
        check_broker_url(one_url)
    from ._amqp import open_amqp_session

    if reconnect is None:
        if len(urls) > 1:
            raise ValueError("several broker URLs need a reconnect policy")
        async with open_amqp_session(urls[0], heartbeat=heartbeat, bridge=bridge,
                                     connect_timeout=DEFAULT_CONNECT_TIMEOUT) as session:
            yield session
        return

    def opener(one_url: str, connect_timeout: float | None,
               ) -> AbstractAsyncContextManager[Session]:
        return open_amqp_session(one_url, heartbeat=heartbeat, bridge=bridge,
                                 connect_timeout=connect_timeout)

    async with open_resilient_session(urls, opener, reconnect, on_state) as session:
        yield session


@asynccontextmanager
async def _open_sqlite(url: str, reconnect: ReconnectPolicy | None,
                       on_state: Callable[[ConnectionState], None] | None,
                       ) -> AsyncIterator[Session]:
    """A sqlite session; with a reconnect policy, a ResilientSession over successive ones:
    a session that the others declared dead (its process hung past the liveness timeout)
    comes back as a new connection, as an AMQP one does after a network cut."""
    from ._sqlite import SqliteOptions, open_sqlite_session

    SqliteOptions.from_url(url)  # a bad URL: ValueError now, not retried as an outage
    if reconnect is None:
        async with open_sqlite_session(url) as session:
            yield session
        return

    def opener(one_url: str, _connect_timeout: float | None,
               ) -> AbstractAsyncContextManager[Session]:
        # Opening a local file has no network to time out; the lock wait is bounded inside.
        return open_sqlite_session(one_url)

    async with open_resilient_session([url], opener, reconnect, on_state) as session:
        yield session
