"""A TCP proxy owned by a test, to cut client connections without touching the broker.

By default it forwards to the broker under test (``KIWITRIO_TEST_URL``'s host and port).
"""

from __future__ import annotations

import functools
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeVar

import trio

from .conftest import AMQP_URL


def broker_target() -> tuple[str, int]:
    """Host and port of the broker under test."""
    return _url_target(AMQP_URL)


def _url_target(url: str) -> tuple[str, int]:
    """The host and port an ``amqp://`` URL points at (5672 when it names none)."""
    parts = urllib.parse.urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 5672


class TcpProxy:
    """Forwards connections from ``127.0.0.1:port`` to ``target``; :meth:`cut` drops them."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self.port = 0
        self._scopes: set[trio.CancelScope] = set()
        self.connections_seen = 0
        self._seen_changed = trio.Event()
        #: While set, new connections are accepted and closed at once (broker "down").
        self.blocked = False

    def url(self, user: str = "guest", password: str = "guest") -> str:
        return f"amqp://{user}:{password}@127.0.0.1:{self.port}/"

    def cut(self) -> int:
        """Abort every connection going through the proxy; returns how many."""
        for scope in self._scopes:
            scope.cancel()
        return len(self._scopes)

    def block(self) -> int:
        """Cut every connection and refuse new ones until :meth:`unblock`."""
        self.blocked = True
        return self.cut()

    def unblock(self) -> None:
        self.blocked = False

    async def wait_for_connections(self, count: int) -> None:
        """Wait until ``count`` connections (accepted or refused) have come in."""
        while self.connections_seen < count:
            await self._seen_changed.wait()

    async def _handle(self, client: trio.SocketStream) -> None:
        self.connections_seen += 1
        self._seen_changed.set()
        self._seen_changed = trio.Event()
        if self.blocked:
            await client.aclose()
            return
        with trio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                upstream = await trio.open_tcp_stream(*self._target)
                async with client, upstream, trio.open_nursery() as nursery:
                    nursery.start_soon(_pump, client, upstream, nursery.cancel_scope)
                    nursery.start_soon(_pump, upstream, client, nursery.cancel_scope)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                self._scopes.discard(scope)


async def _pump(source: trio.SocketStream, sink: trio.SocketStream,
                scope: trio.CancelScope) -> None:
    try:
        async for chunk in source:
            await sink.send_all(chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        scope.cancel()  # one direction ended: end the other too


@asynccontextmanager
async def open_tcp_proxy(target_host: str | None = None,
                         target_port: int | None = None) -> AsyncIterator[TcpProxy]:
    """A proxy to ``target_host:target_port``, by default the broker under test."""
    default_host, default_port = _url_target(AMQP_URL)
    async with serve_proxy(TcpProxy(target_host or default_host,
                                    target_port or default_port)) as proxy:
        yield proxy


P = TypeVar("P", bound=TcpProxy)


@asynccontextmanager
async def serve_proxy(proxy: P) -> AsyncIterator[P]:
    """Listen on a free loopback port for ``proxy`` (any TcpProxy) for the block."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, proxy._handle, 0, host="127.0.0.1")
        )
        proxy.port = listeners[0].socket.getsockname()[1]
        try:
            yield proxy
        finally:
            nursery.cancel_scope.cancel()
