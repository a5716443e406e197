"""Fixtures for the blocking API. No async code in these tests: they are plain pytest."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio

import kiwitrio_sync

from ..conftest import AMQP_URL, Names, delete_queues

Connect = Callable[..., kiwitrio_sync.Communicator]


@pytest.fixture
def connect(names: Names) -> Iterator[Connect]:
    """``connect(**overrides)``: a blocking communicator on this test's unique names.

    Every communicator made is closed, and the test's task queues deleted, afterwards.
    """
    made: list[kiwitrio_sync.Communicator] = []
    queues = {names.task_queue}

    def _connect(**overrides: Any) -> kiwitrio_sync.Communicator:
        kwargs = {**names.kwargs(), **overrides}
        queues.add(kwargs["task_queue"])
        url = kwargs.pop("url", AMQP_URL)
        comm = kiwitrio_sync.connect(url, **kwargs)
        made.append(comm)
        return comm

    yield _connect
    for comm in made:
        comm.close()
    trio.run(delete_queues, AMQP_URL, queues, names)


KiwipyConnect = Callable[..., kiwitrio_sync.RmqThreadCommunicator]


@pytest.fixture(params=["amqp", "memory"])
def kiwipy_connect(request: pytest.FixtureRequest, names: Names) -> Iterator[KiwipyConnect]:
    """``kiwipy_connect(**overrides)``: kiwiPy-face communicators on this test's names, on the
    broker and on memory:// (there they share one portal, hence one in-memory broker).

    kiwiPy's option names (``connection_params``, ``task_prefetch_count``...) apply; every
    communicator made is closed, and the test's task queues deleted, afterwards.
    """
    made: list[kiwitrio_sync.RmqThreadCommunicator] = []
    queues = {names.task_queue}
    memory = request.param == "memory"
    portal = kiwitrio_sync.Portal() if memory else None
    url = f"memory://{names.prefix}" if memory else AMQP_URL

    def _connect(**overrides: Any) -> kiwitrio_sync.RmqThreadCommunicator:
        kwargs: dict[str, Any] = {**names.kwargs(), "connection_params": url, **overrides}
        queues.add(kwargs["task_queue"])
        if portal is not None:
            kwargs.setdefault("portal", portal)
        comm = kiwitrio_sync.RmqThreadCommunicator.connect(**kwargs)
        made.append(comm)
        return comm

    yield _connect
    for comm in made:
        comm.close()
    if portal is not None:
        portal.stop()
    else:
        trio.run(delete_queues, AMQP_URL, queues, names)
