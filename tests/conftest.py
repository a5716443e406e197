"""Shared fixtures: unique names per test, communicators on the real broker and in memory.

The broker is the shared one at ``KIWITRIO_TEST_URL`` (default amqp://guest:guest@127.0.0.1:5672/).
Tests never reconfigure it; every test uses its own exchange and queue names, in testing mode
(auto-delete exchanges, expiring queues), and deletes its task queues at the end.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest

import kiwitrio
from kiwitrio._bridge import BRIDGE_ENV
from kiwitrio.backends import Session, open_session
from kiwitrio.testing import KiwitrioNames

from .contract import Backend

AMQP_URL = os.environ.get("KIWITRIO_TEST_URL", "amqp://guest:guest@127.0.0.1:5672/")

# The whole suite runs on one asyncio bridge, whatever its tests import (importing
# trio_asyncio would otherwise change what "auto" means half-way): KIWITRIO_BRIDGE, else the
# thread bridge. Child processes (workers, CLI runs) inherit it.
os.environ.setdefault(BRIDGE_ENV, "thread")


def pytest_report_header() -> list[str]:
    return [f"kiwitrio: broker {AMQP_URL}, bridge {os.environ[BRIDGE_ENV]}"]


#: The project's tests use the kiwitrio.testing plugin's names (unique, cleaned up).
Names = KiwitrioNames


@pytest.fixture
def names(kiwitrio_names: KiwitrioNames) -> KiwitrioNames:
    """Unique names (the plugin's); the broker's queues and exchanges are deleted afterwards."""
    kiwitrio_names.used_on(AMQP_URL)
    return kiwitrio_names


#: Whether the ``sqlite`` parameter of the backend fixtures runs (``KIWITRIO_TEST_SQLITE=0``
#: skips it: CI runs it in one session only, see noxfile.py).
SQLITE_ENABLED = os.environ.get("KIWITRIO_TEST_SQLITE", "1") != "0"
_SQLITE_OFF = pytest.mark.skip(reason="KIWITRIO_TEST_SQLITE=0")
#: The backends the communicator and contract tests run on.
BACKENDS = ["amqp", "memory",
            pytest.param("sqlite", marks=() if SQLITE_ENABLED else (_SQLITE_OFF,))]


def test_url(request: pytest.FixtureRequest, names: Names) -> str:
    """The URL of the backend ``request.param`` for this test (sqlite: a file in tmp_path,
    polled twice a second; a killed process is noticed by its doorbell, not by the liveness
    timeout, which stays long so that a loaded machine never declares a live session dead)."""
    if request.param == "amqp":
        return AMQP_URL
    if request.param == "sqlite":
        tmp_path = request.getfixturevalue("tmp_path")
        return f"sqlite://{tmp_path}/kiwitrio.db?liveness=30&poll=0.5"
    return f"memory://{names.prefix}"


test_url.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


@pytest.fixture(params=BACKENDS)
def broker_url(request: pytest.FixtureRequest, names: Names) -> str:
    """Each communicator test runs against RabbitMQ, the in-memory broker and sqlite."""
    return test_url(request, names)


OpenComm = Callable[..., AbstractAsyncContextManager[kiwitrio.Communicator]]


@pytest.fixture
async def open_comm(broker_url: str, names: Names) -> AsyncIterator[OpenComm]:
    """``async with open_comm(**overrides) as comm``: a communicator on this test's names.

    Task queues the test declared are deleted afterwards.
    """
    queues: set[str] = {names.task_queue}

    @asynccontextmanager
    async def _open(**overrides: Any) -> AsyncIterator[kiwitrio.Communicator]:
        kwargs = {**names.kwargs(), **overrides}
        queues.add(kwargs["task_queue"])
        async with kiwitrio.open_communicator(broker_url, **kwargs) as comm:
            yield comm

    yield _open
    if broker_url.startswith("amqp"):
        await delete_queues(broker_url, queues, names)


async def delete_queues(url: str, queues: set[str], names: Names | None = None) -> None:
    """Delete task queues (with their dead-letter queues) and, given names, the exchanges."""
    async with open_session(url, heartbeat=0) as session:
        for queue in queues:
            await session.delete_queue(queue)
            await session.delete_queue(f"{queue}.dead-letter")
        if names:
            await session.delete_queue(f"{names.task_exchange}.catalogue")
        for exchange in names.exchanges() if names else ():
            await session.delete_exchange(exchange)


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, names: Names) -> AsyncIterator[Backend]:
    """A broker for a backend contract test (tests/contract.py), on each backend."""
    made = Backend(test_url(request, names), names)
    yield made
    await made.clean_up()


@pytest.fixture
async def session(backend: Backend) -> AsyncIterator[Session]:
    async with backend.open() as opened:
        yield opened
