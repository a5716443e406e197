"""kiwitrio_sync.kiwipy_compat: kiwiPy 0.9's public namespace; ``import kiwipy`` aliased to it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import re
import subprocess
import sys
import textwrap
import threading
import types
from typing import Any

import pytest

import kiwitrio
import kiwitrio_sync
from kiwitrio_sync import kiwipy_compat as kiwipy

TIMEOUT = 15.0

# kiwiPy 0.9's kiwipy.__all__ and kiwipy.rmq.__all__.
KIWIPY_NAMES = {
    "RemoteException", "DeliveryFailed", "TaskRejected", "UnroutableError", "TimeoutError",
    "DuplicateSubscriberIdentifier", "CommunicatorClosed", "InvalidStateError", "QueueEmpty",
    "Future", "chain", "copy_future", "CancelledError", "capture_exceptions", "wait",
    "as_completed", "Communicator", "CommunicatorHelper", "EventHelper", "LocalCommunicator",
    "BroadcastFilter", "connect",
}
KIWIPY_RMQ_NAMES = {
    "RmqTaskSubscriber", "RmqTaskPublisher", "RmqTaskQueue", "RmqIncomingTask",
    "RmqCommunicator", "async_connect", "RmqThreadCommunicator", "RmqThreadTaskQueue", "connect",
}


def test_the_whole_public_namespace_is_there() -> None:
    assert KIWIPY_NAMES <= set(kiwipy.__all__)
    assert all(hasattr(kiwipy, name) for name in KIWIPY_NAMES)
    assert KIWIPY_RMQ_NAMES <= set(kiwipy.rmq.__all__)
    assert all(hasattr(kiwipy.rmq, name) for name in KIWIPY_RMQ_NAMES)
    assert kiwipy.__version__ == "0.9.0"
    # The classes kiwitrio raises, so that kiwiPy's except clauses catch them.
    assert kiwipy.RemoteException is kiwitrio.RemoteException
    assert kiwipy.UnroutableError is kiwitrio_sync.UnroutableError
    assert kiwipy.exceptions.QueueEmpty is kiwitrio.QueueEmpty
    assert kiwipy.TimeoutError is concurrent.futures.TimeoutError
    assert kiwipy.Future is concurrent.futures.Future
    assert kiwipy.communications.UnroutableError is kiwitrio.UnroutableError  # AiiDA's import
    assert kiwipy.rmq.RmqThreadCommunicator is kiwitrio_sync.RmqThreadCommunicator
    assert issubclass(kiwitrio_sync.RmqThreadCommunicator, kiwipy.Communicator)
    assert issubclass(kiwipy.LocalCommunicator, kiwipy.Communicator)
    assert not issubclass(kiwitrio_sync.Communicator, kiwipy.Communicator)  # the other face
    assert kiwipy.rmq.defaults.TASK_EXCHANGE == "kiwipy.tasks"
    assert kiwipy.rmq.tasks.TASK_PENDING == "pending"


def test_kiwipy_asyncio_classes_are_there_by_name_only() -> None:
    with pytest.raises(NotImplementedError, match="RmqThreadCommunicator"):
        kiwipy.rmq.RmqCommunicator()
    with pytest.raises(NotImplementedError):
        kiwipy.rmq.RmqIncomingTask()
    with pytest.raises(NotImplementedError):
        asyncio.run(kiwipy.rmq.async_connect("amqp://"))


def test_install_kiwipy_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "kiwipy" not in sys.modules
    try:
        module = kiwitrio_sync.install_kiwipy_alias()
        assert module is kiwipy
        assert kiwitrio_sync.install_kiwipy_alias() is kiwipy  # again: no-op
        import kiwipy as aliased  # type: ignore[import-not-found]
        from kiwipy import rmq  # type: ignore[import-not-found]
        from kiwipy.communications import (  # type: ignore[import-not-found]
            UnroutableError,
        )

        threadcomms = importlib.import_module("kiwipy.rmq.threadcomms")
        assert aliased is kiwipy and rmq is kiwipy.rmq
        assert threadcomms.RmqThreadCommunicator is kiwitrio_sync.RmqThreadCommunicator
        assert UnroutableError is kiwitrio.UnroutableError
    finally:
        kiwitrio_sync.remove_kiwipy_alias()
    assert not any(name == "kiwipy" or name.startswith("kiwipy.") for name in sys.modules)
    # Too late once the real kiwiPy is imported: objects made from it would stay kiwiPy's.
    monkeypatch.setitem(sys.modules, "kiwipy", types.ModuleType("kiwipy"))
    with pytest.raises(RuntimeError, match="before anything imports kiwipy"):
        kiwitrio_sync.install_kiwipy_alias()


def test_alias_in_a_fresh_interpreter_before_plumpy_like_imports() -> None:
    code = textwrap.dedent("""
        import kiwitrio_sync
        kiwitrio_sync.install_kiwipy_alias()
        import kiwipy
        from kiwipy import rmq, BroadcastFilter, capture_exceptions, chain, copy_future
        from kiwipy.communications import UnroutableError
        assert kiwipy.rmq.RmqThreadCommunicator is kiwitrio_sync.RmqThreadCommunicator

        class LoopCommunicator(kiwipy.Communicator):   # as plumpy does
            def __init__(self, inner):
                self._inner = inner
        LoopCommunicator(None)                         # abstract in name only, as in kiwiPy
        with kiwipy.LocalCommunicator() as comm:
            comm.add_rpc_subscriber(lambda c, m: m + 1, 5)
            print(comm.rpc_send(5, 41).result(timeout=10))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "42"


# -- futures helpers --------------------------------------------------------------------------


def test_futures_helpers() -> None:
    source: concurrent.futures.Future[int] = concurrent.futures.Future()
    target: concurrent.futures.Future[int] = concurrent.futures.Future()
    kiwipy.chain(source, target)
    source.set_result(3)
    assert target.result(timeout=0) == 3

    failed: concurrent.futures.Future[int] = concurrent.futures.Future()
    failed.set_exception(KeyError("k"))
    copy = kiwipy.Future()
    kiwipy.copy_future(failed, copy)
    assert isinstance(copy.exception(timeout=0), KeyError)

    cancelled: concurrent.futures.Future[int] = concurrent.futures.Future()
    cancelled.cancel()
    copy = kiwipy.Future()
    kiwipy.copy_future(cancelled, copy)
    assert copy.cancelled()
    done = kiwipy.Future()
    done.set_result("kept")
    kiwipy.copy_future(source, done)  # a done target is left alone
    assert done.result() == "kept"

    captured = kiwipy.Future()
    error = RuntimeError("boom")
    with kiwipy.capture_exceptions(captured):
        raise error
    assert captured.exception() is error
    with pytest.raises(ValueError):
        with kiwipy.capture_exceptions(kiwipy.Future(), ignore=(ValueError,)):
            raise ValueError
    assert kiwipy.CancelledError is concurrent.futures.CancelledError
    assert kiwipy.wait is concurrent.futures.wait


# -- BroadcastFilter: kiwiPy's matching ------------------------------------------------------


def test_broadcast_filter_matches_as_kiwipy_does() -> None:
    calls: list[Any] = []
    fltr = kiwipy.BroadcastFilter(lambda *args: calls.append(args), subject="purchase.*")
    assert fltr.__name__ == "BroadcastFilter"
    assert not fltr.is_filtered(None, "purchase.car")
    assert fltr.is_filtered(None, "purchaseXcar")  # "." is a literal dot
    assert not fltr.is_filtered(None, "purchase.car.blue")  # "*" spans dots
    assert fltr.is_filtered(None, "sell.car")
    assert not fltr.is_filtered(None, None)  # no subject: not filtered
    prefix = kiwipy.BroadcastFilter(lambda *args: None, subject="state_changed")
    assert not prefix.is_filtered(None, "state_changed.running.finished")  # matched at start
    regex = kiwipy.BroadcastFilter(lambda *args: None,
                                   subject=re.compile(r"^(?!state_changed).*"))
    assert regex.is_filtered(None, "state_changed.created.running")  # plumpy's filter
    assert not regex.is_filtered(None, "pause")
    by_sender = kiwipy.BroadcastFilter(lambda *args: None, sender=42)  # AiiDA: a pk
    assert not by_sender.is_filtered(42, "x") and by_sender.is_filtered(43, "x")
    by_sender.add_sender_filter("*.jones")
    assert not by_sender.is_filtered("bob.jones", None)
    fltr("comm", "body", "sender", "purchase.piano", "cid")
    fltr("comm", "body", "sender", "sell.piano", "cid")
    assert calls == [("comm", "body", "sender", "purchase.piano", "cid")]


# -- CommunicatorHelper, abstract Communicator, EventHelper --------------------------------------


class _Helper(kiwipy.CommunicatorHelper):
    def task_send(self, task: Any, no_reply: bool = False) -> Any:
        return self.fire_task(task, no_reply)

    def rpc_send(self, recipient_id: Any, msg: Any) -> Any:
        return self.fire_rpc(recipient_id, msg)

    def broadcast_send(self, body: Any, sender: Any = None, subject: Any = None,
                       correlation_id: Any = None) -> Any:
        return self.fire_broadcast(body, sender=sender, subject=subject,
                                   correlation_id=correlation_id)


def test_communicator_helper_calls_subscribers_in_the_calling_thread() -> None:
    helper = _Helper()
    threads: list[threading.Thread] = []

    def declines(_c: Any, task: Any) -> Any:
        raise kiwipy.TaskRejected

    def doubles(_c: Any, task: Any) -> Any:
        threads.append(threading.current_thread())
        return task * 2

    helper.add_task_subscriber(declines)
    ident = helper.add_task_subscriber(doubles, "doubles")
    assert ident == "doubles"
    with pytest.raises(kiwipy.DuplicateSubscriberIdentifier):
        helper.add_task_subscriber(doubles, "doubles")
    assert helper.task_send(4).result(timeout=0) == 8
    assert threads == [threading.current_thread()]
    assert helper.task_send(4, no_reply=True) is None
    helper.add_rpc_subscriber(lambda _c, m: 1 / m, "inverse")
    with pytest.raises(kiwipy.RemoteException, match="ZeroDivisionError"):
        helper.rpc_send("inverse", 0).result(timeout=0)
    with pytest.raises(kiwipy.UnroutableError):
        helper.rpc_send("nobody", 1)
    received: list[dict[str, Any]] = []
    helper.add_broadcast_subscriber(lambda _c, **kwargs: received.append(kwargs))
    assert helper.broadcast_send("hi", subject="s") is True
    assert received == [{"body": "hi", "sender": None, "subject": "s", "correlation_id": None}]
    with pytest.raises(ValueError):
        helper.remove_rpc_subscriber("nobody")
    helper.remove_task_subscriber("doubles")
    with helper:
        pass
    assert helper.is_closed()
    with pytest.raises(kiwipy.CommunicatorClosed):
        helper.task_send(1)


def test_abstract_communicator_is_abstract_in_name_only() -> None:
    class Partial(kiwipy.Communicator):
        def close(self) -> None:
            self.closed = True

    partial = Partial()  # kiwiPy does not enforce the abstract methods either
    with pytest.raises(NotImplementedError):
        partial.task_send("x")
    with partial:
        pass
    assert partial.closed


def test_event_helper() -> None:
    class Listener:
        def __init__(self) -> None:
            self.events: list[Any] = []

        def on_event(self, value: Any) -> None:
            self.events.append(value)

    class Broken(Listener):
        def on_event(self, value: Any) -> None:
            raise RuntimeError("listener failed")

    helper = kiwipy.EventHelper(Listener)
    good, broken = Listener(), Broken()
    helper.add_listener(good)
    helper.add_listener(broken)
    helper.fire_event(Listener.on_event, 7)  # the broken one is logged, not raised
    assert good.events == [7]
    with pytest.raises(TypeError):
        helper.add_listener(object())
    helper.remove_all_listeners()
    assert not helper.listeners


# -- LocalCommunicator ------------------------------------------------------------------------


def test_local_communicator_is_private_to_itself() -> None:
    with kiwipy.LocalCommunicator() as first, kiwipy.LocalCommunicator() as second:
        later: concurrent.futures.Future[str] = concurrent.futures.Future()
        first.add_task_subscriber(lambda _c, task: later)
        first.add_rpc_subscriber(lambda _c, msg: msg, "echo")
        outcome = first.task_send("t")
        assert outcome is not None
        nested = outcome.result(timeout=TIMEOUT)  # kiwiPy's shape here too
        later.set_result("done")
        assert nested.result(timeout=TIMEOUT) == "done"
        assert first.rpc_send("echo", 1).result(timeout=TIMEOUT) == 1
        with pytest.raises(kiwipy.UnroutableError):
            second.rpc_send("echo", 1)  # its own broker: nobody there


def test_kiwipy_connect_takes_a_uri() -> None:
    with pytest.raises(ValueError, match="unknown communicator URI"):
        kiwipy.connect("zmq://nowhere")
    with kiwipy.connect("memory://kiwipy-connect") as comm:
        assert isinstance(comm, kiwipy.rmq.RmqThreadCommunicator)
        assert comm.broadcast_send(None) is True
