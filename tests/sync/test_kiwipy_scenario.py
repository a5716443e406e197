"""An AiiDA-style scenario through ``import kiwipy`` aliased to kiwitrio.

A daemon worker launches plumpy-like processes from tasks (tests/sync/plumpy_like.py); a
controller pauses, plays, kills and finishes them over RPC with integer ids, as AiiDA does with
its pks, and waits for the results through plumpy's unwrap of nested futures. On RabbitMQ the
worker is a process of its own (tests/sync/kiwipy_worker.py); on memory:// it is a thread
sharing the controller's portal (and so its in-memory broker).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import trio

import kiwitrio_sync

from ..conftest import AMQP_URL, Names, delete_queues

TIMEOUT = 30.0
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def plumpy_like() -> Iterator[ModuleType]:
    """The fakes, importing ``kiwipy`` through the alias (removed afterwards)."""
    kiwitrio_sync.install_kiwipy_alias()
    try:
        yield importlib.import_module("tests.sync.plumpy_like")
    finally:
        kiwitrio_sync.remove_kiwipy_alias()


class StateWatcher:
    """The state-change broadcasts the controller has seen, per sender."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.states: dict[Any, list[str]] = {}

    def __call__(self, _comm: Any, _body: Any, sender: Any, subject: Any, _cid: Any) -> None:
        with self._changed:
            self.states.setdefault(sender, []).append(subject.rsplit(".", 1)[-1])
            self._changed.notify_all()

    def wait_for(self, pid: int, state: str) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: state in self.states.get(pid, ()), TIMEOUT):
                raise AssertionError(f"process {pid} never went {state}: {self.states}")


@pytest.fixture(params=["amqp", "memory"])
def controller(request: pytest.FixtureRequest, names: Names,
               plumpy_like: ModuleType) -> Iterator[kiwitrio_sync.RmqThreadCommunicator]:
    """The controller's communicator, with a worker taking the test's tasks."""
    if request.param == "amqp":
        with WorkerProcess(names), kiwitrio_sync.RmqThreadCommunicator.connect(
                {"url": AMQP_URL}, **names.kwargs()) as comm:
            yield comm
        trio.run(delete_queues, AMQP_URL, {names.task_queue}, names)
        return
    url = f"memory://{names.prefix}"
    with kiwitrio_sync.Portal() as portal:
        worker_comm = kiwitrio_sync.RmqThreadCommunicator.connect(
            url, portal=portal, task_prefetch_count=8, **names.kwargs())
        stop, ready = threading.Event(), threading.Event()
        worker = threading.Thread(target=plumpy_like.run_worker,
                                  args=(worker_comm, stop, ready), daemon=True)
        worker.start()
        try:
            assert ready.wait(TIMEOUT)
            with kiwitrio_sync.RmqThreadCommunicator.connect(url, portal=portal,
                                                            **names.kwargs()) as comm:
                yield comm
        finally:
            stop.set()
            worker.join(TIMEOUT)
            worker_comm.close()


class WorkerProcess:
    """tests/sync/kiwipy_worker.py in a process of its own, until the block ends."""

    def __init__(self, names: Names) -> None:
        self._args = [sys.executable, "-m", "tests.sync.kiwipy_worker", AMQP_URL, names.prefix]

    def __enter__(self) -> subprocess.Popen[str]:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(self._args, cwd=ROOT, env=env, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        ready = threading.Event()

        def read() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                if line.strip() == "ready":
                    ready.set()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        if not ready.wait(TIMEOUT):
            self.process.kill()
            raise AssertionError("the worker process did not get ready")
        return self.process

    def __exit__(self, *exc_info: object) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()  # the worker stops when its stdin closes
        try:
            self.process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(TIMEOUT)
        finally:
            self._reader.join(TIMEOUT)  # it ends with the worker's stdout
            assert self.process.stdout is not None
            self.process.stdout.close()


def test_aiida_style_worker_and_controller(
        controller: kiwitrio_sync.RmqThreadCommunicator, plumpy_like: ModuleType) -> None:
    kiwipy = plumpy_like.kiwipy
    watcher = StateWatcher()
    controller.add_broadcast_subscriber(kiwipy.BroadcastFilter(watcher, subject="state_changed.*"))
    control = plumpy_like.ProcessController(controller)
    unwrap = plumpy_like.unwrap

    # Launch and wait for the result; pause, check, play, finish, all by integer pk.
    launched = control.launch_process(101)
    watcher.wait_for(101, "running")
    assert isinstance(launched.result(timeout=TIMEOUT), kiwipy.Future)  # kiwiPy's nesting
    assert unwrap(control.pause_process(101)).result(timeout=TIMEOUT) is True
    watcher.wait_for(101, "paused")
    paused = unwrap(control.get_status(101)).result(timeout=TIMEOUT)
    again = unwrap(control.get_status(101)).result(timeout=TIMEOUT)
    assert paused["state"] == again["state"] == "paused"
    assert paused["steps"] == again["steps"]  # paused processes do not step
    assert unwrap(control.play_process(101)).result(timeout=TIMEOUT) is True
    watcher.wait_for(101, "running")
    assert unwrap(control.finish_process(101)).result(timeout=TIMEOUT) is True
    result = unwrap(launched).result(timeout=TIMEOUT)
    assert result["pid"] == 101 and result["steps"] >= again["steps"]
    watcher.wait_for(101, "finished")

    # Kill a running process: the kill RPC says True, the launch future raises.
    killed = control.launch_process(102)
    watcher.wait_for(102, "running")
    assert unwrap(control.kill_process(102)).result(timeout=TIMEOUT) is True
    with pytest.raises(kiwipy.RemoteException, match="KilledError"):
        unwrap(killed).result(timeout=TIMEOUT)
    watcher.wait_for(102, "killed")

    # nowait: the answer is the pid; no_reply: no future at all (AiiDA's continue).
    assert unwrap(control.launch_process(103, nowait=True)).result(timeout=TIMEOUT) == 103
    assert control.launch_process(104, nowait=True, no_reply=True) is None
    for pid in (103, 104):
        watcher.wait_for(pid, "running")
        assert unwrap(control.kill_process(pid)).result(timeout=TIMEOUT) is True
        watcher.wait_for(pid, "killed")

    # A process that is gone is unreachable, as AiiDA's controls expect.
    with pytest.raises(kiwipy.UnroutableError):
        control.pause_process(101)
