"""Fixtures of the fault-injection suite: the ``faults`` marker, a private RabbitMQ node per
module (``private_broker``) and a fleet of worker processes per test (``fleet``)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from ..conftest import AMQP_URL, Names, delete_queues
from .private_broker import PrivateBroker, available
from .workload import WorkerFleet


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "faults: fault-injection scenarios (connection cuts, broker crashes, killed workers, "
        "slow consumers, bad input) with worker processes; about a minute each",
    )
    config.addinivalue_line(
        "markers",
        "cluster: scenarios on a private three-node RabbitMQ cluster; opt-in with "
        "KIWITRIO_CLUSTER_TESTS=short|long",
    )


@pytest.fixture(scope="module")
def private_broker(request: pytest.FixtureRequest) -> Iterator[PrivateBroker]:
    """A private RabbitMQ node for this module, running; tests may kill and restart it.

    Killed (SIGKILL) and its files removed at the end of the module, also on failure.
    """
    reason = available()
    if reason is not None:
        pytest.skip(f"cannot start a private RabbitMQ node: {reason}")
    broker = PrivateBroker()
    request.addfinalizer(broker.destroy)  # registered first: runs even if start() fails
    broker.start()
    yield broker


@pytest.fixture
async def fleet(tmp_path: Path, names: Names) -> AsyncIterator[WorkerFleet]:
    """Worker processes for one test (``await fleet.spawn(...)``); all of them are stopped
    (SIGTERM, then SIGKILL) at the end, and this test's queues on the shared broker deleted
    (with ``names``' own clean-up of the default task queue and the exchanges)."""
    workers = WorkerFleet(tmp_path, names)
    try:
        yield workers
    finally:
        await workers.stop_all()
        if workers.shared_broker_queues:
            with trio.CancelScope(shield=True), trio.move_on_after(15):
                await delete_queues(AMQP_URL, workers.shared_broker_queues)
        record = os.environ.get("KIWITRIO_FAULTS_NAMES_FILE")
        if record:
            # For checking afterwards that nothing was left on the shared broker.
            line = " ".join([names.prefix, *sorted(workers.shared_broker_queues)])
            async with await trio.open_file(record, "a") as out:
                await out.write(line + "\n")
