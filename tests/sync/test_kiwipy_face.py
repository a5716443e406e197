"""kiwitrio_sync.RmqThreadCommunicator: kiwiPy 0.9's observable behaviour, on the broker and in
memory. Each test names the kiwiPy behaviour it pins down."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import threading
import time
import uuid
from typing import Any

import pytest

import kiwitrio_sync
from kiwitrio_sync.kiwipy_compat import BroadcastFilter

from ..conftest import AMQP_URL, Names
from .conftest import KiwipyConnect

TIMEOUT = 15.0
Future = concurrent.futures.Future


def _nesting(future: Future[Any]) -> tuple[int, Any]:
    """How many futures deep the value is, and the value."""
    depth, value = 0, future
    while isinstance(value, Future):
        value = value.result(timeout=TIMEOUT)
        depth += 1
    return depth, value


# -- nested futures ("pending" replies) ----------------------------------------------------


def test_rpc_subscriber_returning_a_chain_of_futures_gives_nested_futures(
        kiwipy_connect: KiwipyConnect) -> None:
    comm = kiwipy_connect()
    inner: Future[str] = Future()

    def subscriber(_c: Any, msg: Any) -> Future[Any]:
        outer: Future[Any] = Future()
        outer.set_result(inner)  # a future resolving to a future: two levels
        return outer

    comm.add_rpc_subscriber(subscriber, "nested")
    reply = comm.rpc_send("nested", None)
    first = reply.result(timeout=TIMEOUT)
    assert isinstance(first, Future)
    second = first.result(timeout=TIMEOUT)
    assert isinstance(second, Future)
    assert not second.done()  # the "pending" step: the subscriber's future is still open
    inner.set_result("bottom")
    assert second.result(timeout=TIMEOUT) == "bottom"


def test_task_subscriber_returning_a_future_gives_a_future_of_a_future(
        kiwipy_connect: KiwipyConnect) -> None:
    comm = kiwipy_connect()
    later: Future[int] = Future()
    comm.add_task_subscriber(lambda _c, task: later)
    outcome = comm.task_send("meaning?")
    assert outcome is not None
    pending = outcome.result(timeout=TIMEOUT)  # resolves before the subscriber's future does
    assert isinstance(pending, Future) and not pending.done()
    later.set_result(42)
    assert pending.result(timeout=TIMEOUT) == 42


def test_plain_results_and_errors_are_not_nested(kiwipy_connect: KiwipyConnect) -> None:
    comm = kiwipy_connect()
    comm.add_rpc_subscriber(lambda _c, msg: msg * 2, "double")
    assert comm.rpc_send("double", 21).result(timeout=TIMEOUT) == 42
    failing: Future[Any] = Future()
    failing.set_exception(ValueError("no"))
    comm.add_rpc_subscriber(lambda _c, _m: failing, "failing")
    with pytest.raises(kiwitrio_sync.RemoteException, match="no"):
        _nesting(comm.rpc_send("failing", None))


@pytest.mark.parametrize("where", ["amqp", "memory"])
def test_kiwitrio_face_gets_final_values_from_a_kiwipy_face_subscriber(
        where: str, names: Names) -> None:
    # The two faces talk to each other: kiwitrio's own senders skip the "pending" replies.
    with kiwitrio_sync.Portal() as portal:
        url = AMQP_URL if where == "amqp" else f"memory://{names.prefix}"
        with kiwitrio_sync.RmqThreadCommunicator.connect(url, portal=portal,
                                                        **names.kwargs()) as worker, \
                kiwitrio_sync.connect(url, portal=portal, **names.kwargs()) as client:
            later: Future[str] = Future()
            worker.add_rpc_subscriber(lambda _c, _m: later, "later")
            answer = client.rpc_send("later", None)
            with pytest.raises(kiwitrio_sync.TimeoutError):
                answer.result(timeout=0.2)
            later.set_result("final")
            assert answer.result(timeout=TIMEOUT) == "final"


# -- RPC identifiers -------------------------------------------------------------------------


def test_rpc_identifiers_are_stringified_as_kiwipy_does(kiwipy_connect: KiwipyConnect) -> None:
    comm = kiwipy_connect()
    pid = uuid.uuid4()
    # plumpy subscribes with str(pid) and sends to the pid itself; AiiDA sends integer pks.
    assert comm.add_rpc_subscriber(lambda _c, msg: f"uuid {msg}", str(pid)) == str(pid)
    assert comm.add_rpc_subscriber(lambda _c, msg: f"pk {msg}", 1234) == "1234"
    assert comm.rpc_send(pid, "play").result(timeout=TIMEOUT) == "uuid play"
    assert comm.rpc_send(1234, "kill").result(timeout=TIMEOUT) == "pk kill"
    assert comm.rpc_send("1234", "str").result(timeout=TIMEOUT) == "pk str"
    with pytest.raises(kiwitrio_sync.DuplicateSubscriberIdentifier):  # AiiDA catches this
        comm.add_rpc_subscriber(lambda _c, msg: msg, 1234)
    comm.remove_rpc_subscriber(1234)
    with pytest.raises(kiwitrio_sync.UnroutableError):
        comm.rpc_send(1234, "gone")


# -- task_send(no_reply=True) ----------------------------------------------------------------


def test_task_send_without_reply_returns_none(kiwipy_connect: KiwipyConnect) -> None:
    comm = kiwipy_connect()
    done = threading.Event()
    seen: list[Any] = []

    def subscriber(_c: Any, task: Any) -> Any:
        seen.append(task)
        done.set()
        return "ignored"

    comm.add_task_subscriber(subscriber)
    assert comm.task_send("fire and forget", no_reply=True) is None
    assert done.wait(TIMEOUT)
    assert seen == ["fire and forget"]
    queue = comm.task_queue(comm._default_queue.name + ".other")
    assert queue.task_send("also", no_reply=True) is None


def test_default_prefetch_is_unlimited_as_in_kiwipy(kiwipy_connect: KiwipyConnect) -> None:
    # kiwiPy's task_prefetch_count=0 means no limit: a worker takes every task at once.
    comm = kiwipy_connect()
    both = threading.Barrier(3)

    def subscriber(_c: Any, task: Any) -> Any:
        both.wait(TIMEOUT)  # two tasks must run at the same time to get past this
        return task

    comm.add_task_subscriber(subscriber)
    futures = [comm.task_send(n) for n in range(2)]
    both.wait(TIMEOUT)
    assert [_nesting(f)[1] for f in futures if f is not None] == [0, 1]


# -- pull mode: next_task, process(), iteration, forgetting ------------------------------------


def test_iterating_without_processing_some_tasks_keeps_them_for_the_next_iteration(
        kiwipy_connect: KiwipyConnect, names: Names) -> None:
    comm = kiwipy_connect()
    queue = comm.task_queue(names.queue("iter"))
    outcomes = [queue.task_send(n) for n in range(10)]
    seen = []
    for task in queue:
        seen.append(task.body)
        assert len(seen) <= 10, "a task came back during the iteration"
        if task.body < 5:
            task.process().set_result(task.body * 10)
    assert sorted(seen) == list(range(10))
    assert [o.result(timeout=TIMEOUT) for o in outcomes[:5] if o] == [0, 10, 20, 30, 40]
    rest = []
    for task in queue:
        rest.append(task.body)
        assert len(rest) <= 5
        task.process().set_result(task.body * 10)
    assert sorted(rest) == [5, 6, 7, 8, 9]
    assert [o.result(timeout=TIMEOUT) for o in outcomes if o] == [n * 10 for n in range(10)]
    assert list(queue) == []


def test_a_forgotten_outcome_puts_the_task_back(kiwipy_connect: KiwipyConnect,
                                                names: Names) -> None:
    comm = kiwipy_connect()
    queue = comm.task_queue(names.queue("forget"))
    result = queue.task_send(1)
    with queue.next_task() as task:
        assert task is not None and task.state == "pending"
        outcome = task.process()
        assert task.state == "processing"
    # Still ours while the outcome lives: nobody else gets it.
    with pytest.raises(kiwitrio_sync.QueueEmpty):
        with queue.next_task():
            pass
    del outcome
    gc.collect()
    with queue.next_task() as task:  # back in the queue
        assert task is not None and task.body == 1 and task.redelivered
        task.process().set_result(10)
    assert result is not None and result.result(timeout=TIMEOUT) == 10


def test_an_outcome_resolved_after_the_block_finishes_the_task(
        kiwipy_connect: KiwipyConnect, names: Names) -> None:
    comm = kiwipy_connect()
    queue = comm.task_queue(names.queue("later"))
    result = queue.task_send("work")
    with queue.next_task() as task:
        assert task is not None
        outcome = task.process()
    resolver = threading.Thread(target=outcome.set_result, args=("done later",))
    resolver.start()
    resolver.join(TIMEOUT)
    assert result is not None and result.result(timeout=TIMEOUT) == "done later"
    assert task.state == "finished"
    with pytest.raises(kiwitrio_sync.QueueEmpty):
        with queue.next_task():
            pass


def test_task_states_and_invalid_transitions(kiwipy_connect: KiwipyConnect,
                                             names: Names) -> None:
    comm = kiwipy_connect()
    queue = comm.task_queue(names.queue("states"))
    assert queue.task_send("x", no_reply=True) is None
    with queue.next_task() as task:
        assert task is not None and task.no_reply
        outcome = task.process()
        with pytest.raises(asyncio.InvalidStateError):  # what kiwiPy's tasks raised
            task.process()
        with pytest.raises(kiwitrio_sync.InvalidStateError):
            with task.processing():
                pass
        outcome.set_result(None)
    assert task.state == "finished"
    with pytest.raises(kiwitrio_sync.InvalidStateError):
        task.requeue()


def test_a_cancelled_outcome_puts_the_task_back(kiwipy_connect: KiwipyConnect,
                                                names: Names) -> None:
    comm = kiwipy_connect()
    queue = comm.task_queue(names.queue("cancel"))
    result = queue.task_send("again")
    with queue.next_task() as task:
        assert task is not None
        assert task.process().cancel()
    assert task.state == "requeued"
    with queue.next_task() as task:
        assert task is not None and task.body == "again"
        with task.processing() as outcome:
            outcome.set_result("second time")
    assert result is not None and result.result(timeout=TIMEOUT) == "second time"


def test_processing_block_errors_become_the_outcome(kiwipy_connect: KiwipyConnect,
                                                    names: Names) -> None:
    comm = kiwipy_connect()
    queue = comm.task_queue(names.queue("raise"))
    result = queue.task_send("fails")
    with pytest.raises(RuntimeError):
        with queue.next_task() as task:
            assert task is not None
            with task.processing():
                raise RuntimeError("cannot")
    assert result is not None
    with pytest.raises(kiwitrio_sync.RemoteException, match="cannot"):
        result.result(timeout=TIMEOUT)
    with queue.next_task(fail=False) as nothing:
        assert nothing is None


def test_a_cancelled_subscriber_future_gives_the_task_back(
        kiwipy_connect: KiwipyConnect) -> None:
    # kiwiPy left such a task unacknowledged (so redelivered); here it goes back at once.
    comm = kiwipy_connect()
    attempts: list[Future[Any]] = []
    second = threading.Event()

    def subscriber(_c: Any, task: Any) -> Future[Any]:
        future: Future[Any] = Future()
        attempts.append(future)
        if len(attempts) == 1:
            future.cancel()  # e.g. the worker's event loop shutting down
        else:
            future.set_result(f"{task} on attempt {len(attempts)}")
            second.set()
        return future

    comm.add_task_subscriber(subscriber)
    outcome = comm.task_send("job")
    assert outcome is not None
    assert second.wait(TIMEOUT)
    # Each attempt said "pending" (as kiwiPy's workers do): one level more per attempt.
    assert _nesting(outcome) == (3, "job on attempt 2")


# -- close callbacks, server properties ------------------------------------------------------


def test_close_callbacks(kiwipy_connect: KiwipyConnect) -> None:
    comm = kiwipy_connect()
    calls: list[tuple[Any, Any]] = []

    def callback(sender: Any, exc: Any) -> None:
        calls.append((sender, exc))

    class Listener:
        def on_close(self, sender: Any, exc: Any) -> None:
            calls.append(("weak", exc))

    removed = []
    comm.add_close_callback(callback)
    comm.add_close_callback(lambda sender, exc: removed.append(exc))
    comm.remove_close_callback(callback)
    comm.add_close_callback(callback)
    listener = Listener()
    comm.add_close_callback(listener.on_close, weak=True)
    del listener
    gc.collect()
    with pytest.raises(ValueError):
        comm.remove_close_callback(lambda sender, exc: None)
    comm.close()
    comm.close()
    assert [sender for sender, _ in calls] == [comm]
    assert isinstance(calls[0][1], kiwitrio_sync.ConnectionLost)
    assert len(removed) == 1
    with pytest.raises(kiwitrio_sync.CommunicatorClosed):
        comm.add_close_callback(callback)


def test_server_properties_is_a_dict(kiwipy_connect: KiwipyConnect) -> None:
    props = kiwipy_connect().server_properties
    assert type(props) is dict
    assert isinstance(props["version"], str) and props["product"]


# -- broadcasts --------------------------------------------------------------------------------


def test_broadcasts_reach_each_subscriber_in_order(kiwipy_connect: KiwipyConnect) -> None:
    comm = kiwipy_connect()
    subjects: list[str] = []
    all_in = threading.Event()

    def slow_first(_c: Any, body: Any, sender: Any, subject: Any, _cid: Any) -> None:
        if body == 0:
            time.sleep(0.3)  # later broadcasts must wait for this one, not overtake it
        subjects.append(subject)
        if len(subjects) == 20:
            all_in.set()

    comm.add_broadcast_subscriber(BroadcastFilter(slow_first, subject="purchase.*"))
    for n in range(20):
        comm.broadcast_send(n, subject=f"purchase.{n}")
        comm.broadcast_send(n, subject=f"sell.{n}")
    assert all_in.wait(TIMEOUT)
    assert subjects == [f"purchase.{n}" for n in range(20)]


def test_kiwipy_filters_take_effect_after_subscribing(kiwipy_connect: KiwipyConnect) -> None:
    comm = kiwipy_connect()
    got: list[Any] = []
    arrived = threading.Event()

    def subscriber(_c: Any, body: Any, sender: Any, subject: Any, _cid: Any) -> None:
        got.append(body)
        arrived.set()

    broadcast_filter = BroadcastFilter(subscriber)
    comm.add_broadcast_subscriber(broadcast_filter)
    broadcast_filter.add_sender_filter("alice")  # kiwiPy allowed this; kiwitrio's filter not
    comm.broadcast_send("from bob", sender="bob")
    comm.broadcast_send("from alice", sender="alice")
    assert arrived.wait(TIMEOUT)
    assert got == ["from alice"]


# -- timeouts and lost connections -------------------------------------------------------------


def test_async_task_timeout_must_be_positive(names: Names) -> None:
    with pytest.raises(ValueError, match="async_task_timeout"):
        kiwitrio_sync.RmqThreadCommunicator.connect(f"memory://{names.prefix}",
                                                    async_task_timeout=0)


def test_closing_answers_the_calls_that_arrived(kiwipy_connect: KiwipyConnect) -> None:
    # kiwiPy handled the messages that came while it disconnected; a call to ourselves just
    # before close() is answered (this raced before close() waited for calls in progress).
    for _ in range(30):
        comm = kiwipy_connect()
        answered: Future[Any] = Future()
        comm.add_rpc_subscriber(lambda _c, msg, answered=answered: answered.set_result(msg),
                                "self")
        with comm:
            comm.rpc_send("self", "last words")
        assert answered.result(timeout=TIMEOUT) == "last words"


def test_closed_communicator_raises_communicator_closed_first(
        kiwipy_connect: KiwipyConnect) -> None:
    comm = kiwipy_connect()
    comm.close()
    for call in (lambda: comm.add_rpc_subscriber(None, "rpc"),  # type: ignore[arg-type]
                 lambda: comm.add_task_subscriber(None),  # type: ignore[arg-type]
                 lambda: comm.add_broadcast_subscriber(None),  # type: ignore[arg-type]
                 lambda: comm.rpc_send("rpc", None), lambda: comm.task_send(None),
                 lambda: comm.broadcast_send(None), lambda: comm.task_queue("q")):
        with pytest.raises(kiwitrio_sync.CommunicatorClosed) as raised:
            call()
        assert not isinstance(raised.value, kiwitrio_sync.ConnectionLost)
