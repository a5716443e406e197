"""The blocking twins of inspect, ping, control_shutdown and the queue operations."""

from __future__ import annotations

import threading

import pytest

import kiwitrio
import kiwitrio_sync

from ..conftest import Names
from .conftest import Connect, KiwipyConnect

pytestmark = pytest.mark.timeout(60)

WAIT = 20.0


def test_inspect_ping_and_shutdown_between_blocking_communicators(connect: Connect) -> None:
    worker = connect()
    worker.add_rpc_subscriber(lambda _comm, msg: msg, "sync-ops-echo")
    asked_to_stop = threading.Event()
    hook_thread: list[str] = []

    def stop() -> None:
        hook_thread.append(threading.current_thread().name)
        asked_to_stop.set()

    worker.on_control_shutdown(stop)
    admin = connect()

    [info] = [i for i in admin.inspect(timeout=1.0) if i.identity == worker.identity]
    assert info.rpc_subscribers == ("sync-ops-echo",)
    assert worker.identity in admin.ping(timeout=1.0)
    assert admin.control_shutdown(worker.identity, timeout=1.0) == {worker.identity: True}
    assert asked_to_stop.wait(WAIT)
    assert hook_thread == ["kiwitrio-control-shutdown"]  # not the portal's thread

    worker.on_control_shutdown(None)
    assert admin.control_shutdown(worker.identity, timeout=1.0) == {worker.identity: False}


def test_queue_operations_of_the_kiwipy_face(kiwipy_connect: KiwipyConnect,
                                             names: Names) -> None:
    comm: kiwitrio_sync.RmqThreadCommunicator = kiwipy_connect()
    for task in range(2):
        comm.task_send(task, no_reply=True)
    [status] = [s for s in comm.list_task_queues() if s.name == names.task_queue]
    assert (status.exists, status.waiting) == (True, 2)
    assert comm.purge_queue(names.task_queue) == 2
    with pytest.raises(kiwitrio.InUseError):
        comm.delete_exchange(names.task_exchange)
    assert comm.delete_queue(names.task_queue) == {names.task_queue: 0,
                                                    f"{names.task_queue}.dead-letter": 0}
