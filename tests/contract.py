"""Helpers of the backend contract suites (test_backend_contract.py, test_backend_quorum.py):
a broker for one test with names that are cleaned up, and waiting for what a broker does."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio

from kiwitrio._backends import Consumer, Delivery, ExchangeType, OutgoingMessage, QueueSpec, Session
from kiwitrio.backends import open_session
from kiwitrio.testing import KiwitrioNames as Names

T = TypeVar("T")

#: How long a delivery the test expects may take to arrive.
ARRIVAL = 5.0


def message(body: bytes = b"x", **kwargs: Any) -> OutgoingMessage:
    return OutgoingMessage(body=body, content_type="text/plain", **kwargs)


class Backend:
    """A broker for one test: sessions on it, and unique names deleted afterwards."""

    def __init__(self, url: str, names: Names) -> None:
        self.url = url
        self._names = names
        self._queues: list[str] = []
        self._exchanges: list[str] = []

    @asynccontextmanager
    async def open(self) -> AsyncIterator[Session]:
        async with open_session(self.url, heartbeat=0) as session:
            yield session

    def name(self, label: str) -> str:
        return self._names.unique(label)

    async def queue(self, session: Session, label: str, **spec: Any) -> str:
        # Durable unless exclusive: a strict RabbitMQ 4 refuses transient shared queues (and
        # closes the connection for it), as the 4.3 node of the test matrix is set up to.
        spec.setdefault("durable", not spec.get("exclusive", False))
        name = await session.declare_queue(QueueSpec(self.name(label), **spec))
        self._queues.append(name)
        return name

    async def exchange(self, session: Session, label: str, type: ExchangeType = "direct",
                       *, auto_delete: bool = False) -> str:
        name = self.name(label)
        await session.declare_exchange(name, type, durable=False, auto_delete=auto_delete)
        self._exchanges.append(name)
        return name

    async def clean_up(self) -> None:
        with trio.fail_after(10):
            async with self.open() as session:
                for queue in self._queues:
                    await session.delete_queue(queue)
                for exchange in self._exchanges:
                    await session.delete_exchange(exchange)


async def receive(consumer: Consumer) -> Delivery:
    with trio.fail_after(ARRIVAL):
        return await consumer.deliveries.receive()


async def eventually(check: Callable[[], Awaitable[T | None]]) -> T:
    """Ask the broker until ``check()`` gives something: there is no event to wait on for a
    queue's state (a dead-lettered message, say, takes a moment to arrive)."""
    with trio.fail_after(ARRIVAL):
        while True:
            found = await check()
            if found is not None:
                return found
            await trio.sleep(0.02)


async def get_within(session: Session, queue: str) -> Delivery:
    """``basic.get`` until a message is there."""
    return await eventually(lambda: session.get(queue))


async def queue_holds(session: Session, queue: str, count: int) -> None:
    async def holds() -> bool | None:
        stats = await session.inspect_queue(queue)
        return True if stats is not None and stats.messages == count else None

    await eventually(holds)


async def nothing_more(consumer: Consumer) -> None:
    """No delivery arrives for a moment (the broker had every chance to send one)."""
    with trio.move_on_after(0.3):
        delivery = await consumer.deliveries.receive()
        raise AssertionError(f"unexpected delivery {delivery.body!r}")
