"""The kiwiPy face when the connection goes: kiwiPy's exceptions where kiwiPy code catches them.

plumpy catches ``kiwipy.TimeoutError`` around adding subscribers and broadcasting, and aio-pika's
``ConnectionClosed`` around its state-change broadcasts. Connections go through a TCP proxy
owned by the test (tests/tcp_proxy.py), run in a portal thread of its own.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Iterator
from typing import Any

import aio_pika.exceptions
import pytest
import trio

import kiwitrio_sync

from ..conftest import Names
from ..tcp_proxy import TcpProxy, open_tcp_proxy

TIMEOUT = 20.0
FAST_RECONNECT = kiwitrio_sync.ReconnectPolicy(initial_delay=0.05, max_delay=0.2, jitter=0.05)


class Proxy:
    """A TCP proxy in a portal of its own: block() and unblock() from any thread."""

    def __init__(self, portal: kiwitrio_sync.Portal, proxy: TcpProxy) -> None:
        self._portal = portal
        self._proxy = proxy
        self.url = proxy.url()

    def block(self) -> None:
        self._portal.call(_run_sync, self._proxy.block)

    def unblock(self) -> None:
        self._portal.call(_run_sync, self._proxy.unblock)


async def _run_sync(fn: Any) -> Any:
    return fn()


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    with kiwitrio_sync.Portal("test-proxy") as portal:
        ready: concurrent.futures.Future[TcpProxy] = concurrent.futures.Future()

        async def serve() -> None:
            async with open_tcp_proxy() as tcp_proxy:
                ready.set_result(tcp_proxy)
                await trio.sleep_forever()

        running = portal.submit(serve)
        yield Proxy(portal, ready.result(TIMEOUT))
        running.cancel()


def test_a_call_during_an_outage_times_out_as_in_kiwipy_and_happens_later(
        proxy: Proxy, names: Names) -> None:
    states: list[kiwitrio_sync.ConnectionState] = []
    lost = threading.Event()
    back = threading.Event()

    def on_state(state: kiwitrio_sync.ConnectionState) -> None:
        states.append(state)
        if state is kiwitrio_sync.ConnectionState.CONNECTED and lost.is_set():
            back.set()

    closings: list[tuple[Any, BaseException | None]] = []
    with kiwitrio_sync.RmqThreadCommunicator.connect(
            proxy.url, async_task_timeout=0.5, reconnect=FAST_RECONNECT,
            on_connection_state=on_state, **names.kwargs()) as comm:
        comm.add_close_callback(lambda sender, exc: (closings.append((sender, exc)),
                                                     lost.set()))
        received = threading.Event()
        comm.add_broadcast_subscriber(lambda *_args: received.set())
        proxy.block()
        assert lost.wait(TIMEOUT)  # the close callback ran for the lost connection
        assert closings[0][0] is comm
        assert isinstance(closings[0][1], kiwitrio_sync.ConnectionLost)
        with pytest.raises(kiwitrio_sync.TimeoutError, match="may still take effect") as raised:
            comm.broadcast_send("sent during the outage")
        assert isinstance(raised.value, kiwitrio_sync.OperationTimeout)
        assert not received.is_set()
        proxy.unblock()
        assert back.wait(TIMEOUT)
        # The broadcast that timed out was not cancelled: it goes out once the connection is
        # back (at least once; kiwiPy's did the same).
        assert received.wait(TIMEOUT)
    assert kiwitrio_sync.ConnectionState.RECONNECTING in states


def test_a_lost_connection_raises_what_plumpy_catches(proxy: Proxy, names: Names) -> None:
    closings: list[BaseException | None] = []
    lost = threading.Event()
    with kiwitrio_sync.RmqThreadCommunicator.connect(
            proxy.url, reconnect=None, **names.kwargs()) as comm:
        comm.add_close_callback(lambda _sender, exc: (closings.append(exc), lost.set()))
        proxy.block()
        # Without a reconnect policy the communicator closes when the connection goes; the
        # sends fail from the moment the loss is noticed (at once: the socket is closed).
        deadline = time.monotonic() + TIMEOUT
        with pytest.raises(aio_pika.exceptions.ConnectionClosed) as raised:
            while time.monotonic() < deadline:
                comm.broadcast_send(None, sender=1, subject="state_changed.running.finished")
        error = raised.value
        assert isinstance(error, kiwitrio_sync.ConnectionLost)
        assert isinstance(error, kiwitrio_sync.ConnectionFailed)
        assert isinstance(error, kiwitrio_sync.CommunicatorClosed)
        with pytest.raises(aio_pika.exceptions.ConnectionClosed):
            comm.add_rpc_subscriber(lambda _c, m: m, "after")
        assert lost.wait(TIMEOUT)  # the close callbacks heard of it, once
    assert len(closings) == 1 and isinstance(closings[0], kiwitrio_sync.ConnectionLost)
