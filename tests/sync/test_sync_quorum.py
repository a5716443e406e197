"""Quorum queues, delivery limits and finished tasks through kiwitrio_sync (both faces)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import kiwitrio
import kiwitrio_sync

from ..conftest import AMQP_URL, Names
from .conftest import Connect


def test_the_blocking_communicator_takes_the_queue_options(connect: Connect, names: Names,
                                                           tmp_path: Path) -> None:
    store = kiwitrio.SqliteFinishedTasks(tmp_path / "finished.db")
    comm = connect(queue_type="quorum", delivery_limit=4, finished_tasks=store)
    comm.add_task_subscriber(lambda _comm, x: x * 2)
    assert comm.task_send(21).result(timeout=10) == 42
    other = comm.task_queue(names.queue("other"), queue_type="classic")
    other.add_task_subscriber(lambda _comm, x: x + 1)
    assert other.task_send(1).result(timeout=10) == 2
    with pytest.raises(ValueError, match="needs queue_type='quorum'"):
        comm.task_queue(names.queue("third"), queue_type="classic", delivery_limit=1)
    store.close()


def test_the_kiwipy_face_takes_them_too(names: Names) -> None:
    options: dict[str, Any] = {**names.kwargs(), "queue_type": "quorum"}
    with kiwitrio_sync.RmqThreadCommunicator.connect(AMQP_URL, **options) as comm:
        comm.add_task_subscriber(lambda _comm, x: x * 3)
        assert comm.task_send(3).result(timeout=10) == 9
        queue = comm.task_queue(names.queue("more"), delivery_limit=2)
        assert queue.name == names.queue("more")
