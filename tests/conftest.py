"""Shared fixtures: unique names per test, communicators on the real broker and in memory.

The broker is the shared one at ``KIWITRIO_TEST_URL`` (default amqp://guest:guest@127.0.0.1:5672/).
Tests never reconfigure it; every test uses its own exchange and queue names, in testing mode
(auto-delete exchanges, expiring queues), and deletes its task queues at the end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import trio

import kiwitrio
from kiwitrio._communicator import _open_session

AMQP_URL = os.environ.get("KIWITRIO_TEST_URL", "amqp://guest:guest@127.0.0.1:5672/")


@dataclass
class Names:
    """Unique exchange and queue names for one test."""

    prefix: str

    @property
    def message_exchange(self) -> str:
        return f"{self.prefix}.messages"

    @property
    def task_exchange(self) -> str:
        return f"{self.prefix}.tasks"

    @property
    def task_queue(self) -> str:
        return f"{self.prefix}.tasks"

    def exchanges(self) -> list[str]:
        return [self.message_exchange, self.task_exchange, f"{self.task_exchange}.dead-letter"]

    def kwargs(self) -> dict[str, Any]:
        return {
            "message_exchange": self.message_exchange,
            "task_exchange": self.task_exchange,
            "task_queue": self.task_queue,
            "testing_mode": True,
        }


@pytest.fixture
def names() -> Iterator[Names]:
    """Unique names; afterwards, the default task queue and the exchanges are deleted."""
    names = Names(f"kt-test-{uuid.uuid4().hex[:12]}")
    yield names
    # A sync fixture: its teardown runs after the test's own Trio run has finished.
    trio.run(delete_queues, AMQP_URL, {names.task_queue}, names)


@pytest.fixture(params=["amqp", "memory"])
def broker_url(request: pytest.FixtureRequest, names: Names) -> str:
    """Each communicator test runs against RabbitMQ and against the in-memory broker."""
    if request.param == "amqp":
        return AMQP_URL
    return f"memory://{names.prefix}"


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
    async with _open_session(url, heartbeat=0) as session:
        for queue in queues:
            await session.delete_queue(queue)
            await session.delete_queue(f"{queue}.dead-letter")
        for exchange in names.exchanges() if names else ():
            await session.delete_exchange(exchange)
