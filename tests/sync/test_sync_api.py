"""The blocking API: round trips, threads, re-entrancy, errors from the call itself."""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Any

import pytest

import kiwitrio_sync

from ..conftest import Names
from .conftest import Connect

TIMEOUT = 10


def test_task_rpc_and_broadcast_round_trips(connect: Connect) -> None:
    comm = connect()
    comm.add_task_subscriber(lambda _c, task: task * 2)
    comm.add_rpc_subscriber(lambda _c, msg: f"got {msg}", "proc-1")
    received: list[Any] = []
    got = threading.Event()

    def listener(_c: Any, body: Any, sender: Any, subject: Any, cid: Any) -> None:
        received.append((body, sender, subject, cid))
        got.set()

    comm.add_broadcast_subscriber(kiwitrio_sync.BroadcastFilter(listener, subject="jobs.*"))

    future = comm.task_send(21)
    assert isinstance(future, kiwitrio_sync.Future)
    assert future.result(timeout=TIMEOUT) == 42
    assert comm.rpc_send("proc-1", "play").result(timeout=TIMEOUT) == "got play"
    assert comm.broadcast_send("ignored", subject="other") is True
    comm.broadcast_send("hello", sender="me", subject="jobs.1", correlation_id="c")
    assert got.wait(TIMEOUT)
    assert received[0] == ("hello", "me", "jobs.1", "c")
    assert comm.server_properties["version"]


def test_result_timeout_raises_kiwipy_timeout_error(connect: Connect) -> None:
    comm = connect()
    future = comm.task_send("nobody is working")
    with pytest.raises(kiwitrio_sync.TimeoutError):
        future.result(timeout=0.1)


def test_subscribers_run_outside_the_portal_thread(connect: Connect) -> None:
    comm = connect()
    threads: list[threading.Thread] = []

    def subscriber(_c: Any, msg: Any) -> Any:
        threads.append(threading.current_thread())
        return msg

    comm.add_rpc_subscriber(subscriber, "where")
    comm.rpc_send("where", 1).result(timeout=TIMEOUT)
    assert threads[0] is not comm._runtime.portal.thread
    assert threads[0] is not threading.main_thread()


def test_reentrant_subscriber_uses_the_blocking_api(connect: Connect) -> None:
    comm = connect()

    def delegate(communicator: kiwitrio_sync.Communicator, msg: int) -> Any:
        # Blocking calls from inside a subscriber: no deadlock.
        return communicator.task_send(msg).result(timeout=TIMEOUT) + 1

    comm.add_task_subscriber(lambda _c, task: task * 10)
    comm.add_rpc_subscriber(delegate, "delegator")
    assert comm.rpc_send("delegator", 4).result(timeout=TIMEOUT) == 41


def test_subscriber_may_return_a_future(connect: Connect) -> None:
    comm = connect()
    pending: concurrent.futures.Future[str] = concurrent.futures.Future()
    comm.add_rpc_subscriber(lambda _c, _m: pending, "later")
    answer = comm.rpc_send("later", None)
    with pytest.raises(kiwitrio_sync.TimeoutError):
        answer.result(timeout=0.2)
    pending.set_result("now")
    assert answer.result(timeout=TIMEOUT) == "now"


def test_remote_exception(connect: Connect) -> None:
    comm = connect()

    def failing(_c: Any, _m: Any) -> None:
        raise ValueError("nope")

    comm.add_rpc_subscriber(failing, "failing")
    with pytest.raises(kiwitrio_sync.RemoteException, match="nope"):
        comm.rpc_send("failing", 1).result(timeout=TIMEOUT)


def test_send_errors_come_from_the_call_itself(connect: Connect) -> None:
    comm = connect()
    with pytest.raises(kiwitrio_sync.UnroutableError):
        comm.rpc_send("no-such-recipient", 1)
    with pytest.raises(TypeError):
        comm.task_send(object())
    comm.add_rpc_subscriber(lambda _c, m: m, "taken")
    with pytest.raises(kiwitrio_sync.DuplicateSubscriberIdentifier):
        comm.add_rpc_subscriber(lambda _c, m: m, "taken")


def test_async_subscribers_are_refused(connect: Connect) -> None:
    comm = connect()

    async def coroutine_subscriber(_c: Any, _t: Any) -> None:
        pass

    with pytest.raises(TypeError, match="plain functions"):
        comm.add_task_subscriber(coroutine_subscriber)


def test_blocking_call_from_portal_thread_raises_instead_of_hanging(connect: Connect) -> None:
    comm = connect()
    # The answer waits until the callback is added: a future that is already done runs a
    # new callback at once in the adding thread, not in the portal thread.
    callback_added = threading.Event()

    def echo(_comm: Any, msg: str) -> str:
        assert callback_added.wait(TIMEOUT)
        return msg

    comm.add_rpc_subscriber(echo, "echo")
    outcome: list[BaseException | None] = []
    done = threading.Event()

    def callback(_future: concurrent.futures.Future[Any]) -> None:
        # Future callbacks run in the portal thread.
        try:
            comm.rpc_send("echo", "again")
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)
        done.set()

    future = comm.rpc_send("echo", "first")
    future.add_done_callback(callback)
    callback_added.set()
    assert done.wait(TIMEOUT)
    assert isinstance(outcome[0], kiwitrio_sync.BlockingCallInPortal)


def test_pull_mode(connect: Connect, names: Names) -> None:
    comm = connect()
    queue = comm.task_queue(f"{names.prefix}.pull")
    with queue.next_task(timeout=0.1, fail=False) as nothing:
        assert nothing is None
    with pytest.raises(kiwitrio_sync.QueueEmpty):
        with queue.next_task(timeout=0.1):
            pass
    first, second = queue.task_send("a"), queue.task_send("b")
    with queue.next_task(timeout=TIMEOUT) as task:
        assert task is not None
        assert task.body == "a"
        # Left unfinished: requeued.
    with queue.next_task(timeout=TIMEOUT) as task:
        assert task is not None and task.redelivered
        task.process().set_result(f"done {task.body}")
    assert first.result(timeout=TIMEOUT) in {"done a", "done b"}
    for task in queue:
        with task.processing() as outcome:
            outcome.set_result(f"done {task.body}")
    assert {first.result(timeout=TIMEOUT), second.result(timeout=TIMEOUT)} == {"done a", "done b"}


def test_kiwipy_spelling(names: Names) -> None:
    from ..conftest import AMQP_URL

    comm = kiwitrio_sync.RmqThreadCommunicator.connect(
        connection_params={"url": AMQP_URL}, message_exchange=names.message_exchange,
        task_exchange=names.task_exchange, task_queue=names.task_queue, testing_mode=True,
        task_prefetch_count=2, async_task_timeout=5,
    )
    with comm:
        ident = comm.add_rpc_subscriber(lambda _c, m: m)
        assert comm.rpc_send(ident, "x").result(timeout=TIMEOUT) == "x"


def test_shared_portal_and_memory_broker(names: Names) -> None:
    with kiwitrio_sync.Portal() as portal:
        url = f"memory://{names.prefix}"
        worker = kiwitrio_sync.connect(url, portal=portal, **names.kwargs())
        client = kiwitrio_sync.connect(url, portal=portal, **names.kwargs())
        worker.add_task_subscriber(lambda _c, t: -t)
        assert client.task_send(3).result(timeout=TIMEOUT) == -3
        worker.close()
        client.close()
        assert portal.thread.is_alive()  # the portal belongs to the caller
    assert not portal.thread.is_alive()


def test_connection_state_and_redelivery_info(connect: Connect) -> None:
    comm = connect()
    assert comm.connection_state is kiwitrio_sync.ConnectionState.CONNECTED
    seen: list[bool] = []

    def subscriber(_c: Any, task: Any) -> Any:
        seen.append(kiwitrio_sync.current_delivery().redelivered)
        return task

    comm.add_task_subscriber(subscriber)
    assert comm.task_send(1).result(timeout=TIMEOUT) == 1
    assert seen == [False]
    comm.close()
    assert _state(comm) is kiwitrio_sync.ConnectionState.CLOSED


def _state(comm: kiwitrio_sync.Communicator) -> kiwitrio_sync.ConnectionState:
    return comm.connection_state  # (read anew: mypy would keep the value narrowed above)


def test_kiwipy_connection_params_and_generated_identifiers(names: Names) -> None:
    from kiwitrio_sync._kiwipy._communicator import _url_from_params

    from ..conftest import AMQP_URL

    assert _url_from_params({"host": "h", "port": 1, "login": "u", "password": "p/w",
                             "virtualhost": "v"}) == "amqp://u:p%2Fw@h:1/v"
    assert _url_from_params({}) == "amqp://guest:guest@127.0.0.1:5672/"
    with pytest.raises(ValueError, match="unsupported connection parameters"):
        _url_from_params({"hostname": "typo"})
    comm = kiwitrio_sync.RmqThreadCommunicator.connect(
        connection_params={"host": "127.0.0.1",
                           "port": int(AMQP_URL.rsplit(":", 1)[1].strip("/"))},
        **names.kwargs())
    with comm:
        first = comm.add_rpc_subscriber(lambda _c, m: m)
        second = comm.add_rpc_subscriber(lambda _c, m: m)
        assert first != second
        queue = comm.task_queue(names.queue("custom"), 0, 3)  # kiwiPy's (name, size, count)
        assert queue._queue.prefetch_count == 3


def test_dropped_future_still_runs_its_callback(connect: Connect) -> None:
    import gc

    comm = connect()
    comm.add_rpc_subscriber(lambda _c, m: m * 2, "doubler")
    done = threading.Event()
    results: list[Any] = []

    def callback(future: concurrent.futures.Future[Any]) -> None:
        results.append(future.result())
        done.set()

    comm.rpc_send("doubler", 21).add_done_callback(callback)  # the future is not kept
    gc.collect()
    assert done.wait(TIMEOUT)
    assert results == [42]


def test_prefetch_zero_is_refused_plainly(names: Names) -> None:
    with pytest.raises(ValueError, match="task_prefetch_count"):
        kiwitrio_sync.connect(**names.kwargs(), task_prefetch_count=0)
