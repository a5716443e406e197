"""pytest fixtures for testing code that uses kiwitrio (a pytest plugin, loaded automatically).

Installing kiwitrio registers this module as a pytest plugin (entry point ``pytest11``), so
the fixtures below are available in every test without an import::

    async def test_square(kiwitrio_communicator):        # a real broker, unique names
        comm = kiwitrio_communicator
        await comm.add_task_subscriber(lambda comm, x: x * x)
        assert await (await comm.task_send(7)) == 49

    async def test_in_memory(kiwitrio_memory_communicator):   # no broker needed
        ...

    async def test_two_sides(kiwitrio_open):
        async with kiwitrio_open() as worker, kiwitrio_open() as client:
            ...

    def test_blocking(kiwitrio_sync_communicator):        # kiwitrio_sync, no async needed
        assert kiwitrio_sync_communicator.task_send(1).result(timeout=5) ...

Fixtures:

``kiwitrio_url``
    The broker: ``--kiwitrio-url`` on the pytest command line, else ``$KIWITRIO_TEST_URL``,
    else ``amqp://guest:guest@127.0.0.1:5672/``. Override the fixture to change it (for
    example to parametrize tests over ``amqp://...`` and ``memory://``).
``kiwitrio_names``
    A :class:`KiwitrioNames`: unique exchange and queue names for the test, with
    ``.kwargs()`` for :func:`kiwitrio.open_communicator` (including ``testing_mode=True``).
    Afterwards the task queues (with their ``.dead-letter`` queues) and the exchanges are
    deleted from the broker, if they were used on one.
``kiwitrio_communicator``, ``kiwitrio_memory_communicator``, ``kiwitrio_sqlite_communicator``
    (async) An open :class:`kiwitrio.Communicator` on those names: on the broker, in memory,
    or on a sqlite file in ``tmp_path``.
``kiwitrio_open``
    A factory: ``async with kiwitrio_open(**overrides) as comm``; ``overrides`` are
    ``open_communicator`` options, plus ``url``.
``kiwitrio_sync_communicator``, ``kiwitrio_sync_connect``
    The same for :mod:`kiwitrio_sync`: a blocking communicator, and a factory
    ``kiwitrio_sync_connect(**overrides)``; every one is closed after the test.

The async fixtures need `pytest-trio <https://pytest-trio.readthedocs.io>`_: either
``trio_mode = true`` in the pytest configuration, or ``@pytest.mark.trio`` on the tests that
use them. Everything else works without it (:mod:`kiwitrio_sync` is imported only when its
fixtures are used). Disable the plugin with ``-p no:kiwitrio``.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import trio

import kiwitrio
from kiwitrio._backends import open_session

if TYPE_CHECKING:
    import kiwitrio_sync

__all__ = ["DEFAULT_TEST_URL", "KiwitrioNames", "KiwitrioOpen", "KiwitrioSyncConnect"]

DEFAULT_TEST_URL = "amqp://guest:guest@127.0.0.1:5672/"
URL_ENV = "KIWITRIO_TEST_URL"
#: How long the clean-up after a test may take.
CLEANUP_TIMEOUT = 15.0

#: The type of ``kiwitrio_open``.
KiwitrioOpen = Callable[..., AbstractAsyncContextManager[kiwitrio.Communicator]]
#: The type of ``kiwitrio_sync_connect``.
KiwitrioSyncConnect = Callable[..., "kiwitrio_sync.Communicator"]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kiwitrio")
    group.addoption(
        "--kiwitrio-url", default=None, metavar="URL",
        help=f"broker for the kiwitrio_* fixtures (default: ${URL_ENV}, else {DEFAULT_TEST_URL})",
    )


def _is_broker(url: str) -> bool:
    """Whether ``url`` outlives the test's Trio run (a RabbitMQ broker, a sqlite file), so
    that the names used on it must be deleted afterwards."""
    return url.startswith(("amqp:", "amqps:", "sqlite:"))


class KiwitrioNames:
    """Unique exchange and queue names for one test.

    Everything named here lives under :attr:`prefix`. :meth:`queue` makes further task queue
    names, which are deleted afterwards too; :meth:`unique` makes other unique names (RPC
    identifiers...).
    """

    def __init__(self, prefix: str, url: str) -> None:
        self.prefix = prefix
        #: The broker the fixtures use (``kiwitrio_url``).
        self.url = url
        self._queues: dict[str, None] = {self.task_queue: None}
        self._brokers: dict[str, None] = {}

    @property
    def message_exchange(self) -> str:
        return f"{self.prefix}.messages"

    @property
    def task_exchange(self) -> str:
        return f"{self.prefix}.tasks"

    @property
    def task_queue(self) -> str:
        return f"{self.prefix}.tasks"

    def queue(self, label: str) -> str:
        """A unique task queue name, deleted after the test."""
        name = f"{self.prefix}.{label}"
        self._queues[name] = None
        return name

    def unique(self, label: str) -> str:
        """A unique name for anything else (an RPC identifier, a sender...)."""
        return f"{self.prefix}.{label}"

    def queues(self) -> list[str]:
        """The task queues deleted afterwards (their ``.dead-letter`` queues go too)."""
        return list(self._queues)

    def exchanges(self) -> list[str]:
        return [self.message_exchange, self.task_exchange, f"{self.task_exchange}.dead-letter",
                f"{self.message_exchange}.control"]

    def kwargs(self) -> dict[str, Any]:
        """Options for :func:`kiwitrio.open_communicator` or ``kiwitrio_sync.connect``."""
        self.used_on(self.url)
        return self._options()

    def _prepare(self, default_url: str, overrides: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """URL and options for a communicator of the fixtures; tracks what to delete."""
        url = overrides.pop("url", default_url)
        options = {**self._options(), **overrides}
        self.used_on(url)
        if _is_broker(url):
            self._queues[options["task_queue"]] = None
        return url, options

    def used_on(self, url: str) -> None:
        """Record that these names were used on the broker at ``url`` (to clean it up)."""
        if _is_broker(url):
            self._brokers[url] = None

    def _options(self) -> dict[str, Any]:
        return {
            "message_exchange": self.message_exchange,
            "task_exchange": self.task_exchange,
            "task_queue": self.task_queue,
            "testing_mode": True,
        }

    async def delete(self) -> None:
        """Delete the queues and exchanges from every broker they were used on.

        A broker that cannot be reached is skipped (in testing mode what is left there
        expires anyway).
        """
        for url in list(self._brokers):
            try:
                with trio.fail_after(CLEANUP_TIMEOUT):
                    async with open_session(url, heartbeat=0) as session:
                        for queue in self._queues:
                            await session.delete_queue(queue)
                            await session.delete_queue(f"{queue}.dead-letter")
                        await session.delete_queue(f"{self.task_exchange}.catalogue")
                        for exchange in self.exchanges():
                            await session.delete_exchange(exchange)
            except kiwitrio.ConnectionFailed:
                pass
        self._brokers.clear()

    def __repr__(self) -> str:
        return f"KiwitrioNames({self.prefix!r})"


@pytest.fixture
def kiwitrio_url(request: pytest.FixtureRequest) -> str:
    """The broker URL for the kiwitrio fixtures (``--kiwitrio-url``, ``$KIWITRIO_TEST_URL``)."""
    option = request.config.getoption("kiwitrio_url", default=None)
    return str(option or os.environ.get(URL_ENV) or DEFAULT_TEST_URL)


@pytest.fixture
def kiwitrio_names(request: pytest.FixtureRequest, kiwitrio_url: str) -> Iterator[KiwitrioNames]:
    """Unique names for this test; the queues and exchanges are deleted afterwards."""
    label = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name)[:40].strip("-")
    names = KiwitrioNames(f"kt-{label}-{uuid.uuid4().hex[:10]}", kiwitrio_url)
    yield names
    if names._brokers:
        # A sync fixture: this runs after the test's own Trio run (if any) has finished.
        trio.run(names.delete)


@pytest.fixture
def kiwitrio_open(kiwitrio_names: KiwitrioNames, kiwitrio_url: str) -> KiwitrioOpen:
    """``async with kiwitrio_open(**overrides) as comm``: a communicator on the test's names.

    ``overrides`` are :func:`kiwitrio.open_communicator` options, and ``url`` (default
    ``kiwitrio_url``). Task queues named in ``task_queue=`` are deleted afterwards.
    """

    @asynccontextmanager
    async def kiwitrio_open(**overrides: Any) -> AsyncIterator[kiwitrio.Communicator]:
        url, options = kiwitrio_names._prepare(kiwitrio_url, overrides)
        async with kiwitrio.open_communicator(url, **options) as comm:
            yield comm

    return kiwitrio_open


@pytest.fixture
async def kiwitrio_communicator(
    kiwitrio_open: KiwitrioOpen,
) -> AsyncIterator[kiwitrio.Communicator]:
    """An open communicator on the broker (``kiwitrio_url``), with the test's names.

    Needs pytest-trio (``trio_mode = true``, or ``@pytest.mark.trio`` on the test).
    """
    async with kiwitrio_open() as comm:
        yield comm


@pytest.fixture
async def kiwitrio_memory_communicator(
    kiwitrio_open: KiwitrioOpen, kiwitrio_names: KiwitrioNames,
) -> AsyncIterator[kiwitrio.Communicator]:
    """An open communicator on an in-memory broker of its own; no RabbitMQ needed.

    Open more on the same broker with ``kiwitrio_open(url=comm_url)``, where ``comm_url`` is
    ``f"memory://{kiwitrio_names.prefix}"``. Needs pytest-trio.
    """
    async with kiwitrio_open(url=f"memory://{kiwitrio_names.prefix}") as comm:
        yield comm


@pytest.fixture
async def kiwitrio_sqlite_communicator(
    kiwitrio_open: KiwitrioOpen, tmp_path: Path,
) -> AsyncIterator[kiwitrio.Communicator]:
    """An open communicator on a sqlite file of its own (in ``tmp_path``); no RabbitMQ needed,
    and worker processes the test starts can share it.

    Its URL is ``f"sqlite://{tmp_path}/kiwitrio.db"``; open more on it with
    ``kiwitrio_open(url=...)``. Needs pytest-trio.
    """
    async with kiwitrio_open(url=f"sqlite://{tmp_path}/kiwitrio.db") as comm:
        yield comm


@pytest.fixture
def kiwitrio_sync_connect(
    kiwitrio_names: KiwitrioNames, kiwitrio_url: str,
) -> Iterator[KiwitrioSyncConnect]:
    """``kiwitrio_sync_connect(**overrides)``: a blocking communicator on the test's names.

    ``overrides`` as for ``kiwitrio_open``. Every communicator made is closed afterwards.
    """
    made: list[kiwitrio_sync.Communicator] = []

    def kiwitrio_sync_connect(**overrides: Any) -> kiwitrio_sync.Communicator:
        import kiwitrio_sync

        url, options = kiwitrio_names._prepare(kiwitrio_url, overrides)
        comm = kiwitrio_sync.connect(url, **options)
        made.append(comm)
        return comm

    yield kiwitrio_sync_connect
    for comm in made:
        comm.close()


@pytest.fixture
def kiwitrio_sync_communicator(
    kiwitrio_sync_connect: KiwitrioSyncConnect,
) -> kiwitrio_sync.Communicator:
    """A blocking :class:`kiwitrio_sync.Communicator` on the broker; closed afterwards."""
    return kiwitrio_sync_connect()
