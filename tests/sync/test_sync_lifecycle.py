"""Closing the blocking communicator: idempotent, gives work back, leaves no thread behind."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import warnings
from typing import Any

import pytest
import trio

import kiwitrio_sync

from ..conftest import AMQP_URL, Names
from .conftest import Connect, KiwipyConnect

TIMEOUT = 15


def test_close_is_idempotent_joins_the_thread_and_refuses_calls(connect: Connect) -> None:
    comm = connect()
    portal_thread = comm._runtime.portal.thread
    assert portal_thread.is_alive()
    comm.close()
    comm.close()
    assert comm.is_closed()
    assert not portal_thread.is_alive()
    for call in (
        lambda: comm.task_send(1),
        lambda: comm.rpc_send("x", 1),
        lambda: comm.broadcast_send(1),
        lambda: comm.add_task_subscriber(lambda _c, t: t),
        lambda: comm.add_rpc_subscriber(lambda _c, m: m, "x"),
        lambda: comm.add_broadcast_subscriber(lambda *a: None),
        lambda: comm.task_queue("other"),
        lambda: comm.server_properties,
    ):
        with pytest.raises(kiwitrio_sync.CommunicatorClosed):
            call()


def test_close_gives_unfinished_task_back(connect: Connect) -> None:
    started = threading.Event()
    release = threading.Event()

    def stuck(_c: Any, _t: Any) -> str:
        started.set()
        release.wait(TIMEOUT)
        return "too late"

    sender, worker = connect(), connect()
    worker.add_task_subscriber(stuck)
    future = sender.task_send("work")
    assert started.wait(TIMEOUT)
    worker.close()
    release.set()
    rescuer = connect()
    rescuer.add_task_subscriber(lambda _c, task: f"rescued {task}")
    assert future.result(timeout=TIMEOUT) == "rescued work"


def test_close_under_load_loses_nothing(connect: Connect) -> None:
    sender = connect()
    futures = [sender.task_send(i) for i in range(200)]
    worker = connect(task_prefetch_count=8)
    finished = threading.Semaphore(0)
    release = threading.Event()

    def first(_c: Any, task: int) -> tuple[str, int]:
        if task >= 20:
            release.wait(TIMEOUT)  # busy when the worker closes
        finished.release()
        return ("first", task)

    worker.add_task_subscriber(first)
    for _ in range(20):
        assert finished.acquire(timeout=TIMEOUT)
    worker.close()  # with a full prefetch window of tasks in flight
    release.set()
    second = connect(task_prefetch_count=8)
    second.add_task_subscriber(lambda _c, task: ("second", task))
    results = [f.result(timeout=TIMEOUT) for f in futures]
    assert [task for _, task in results] == list(range(200))
    assert {who for who, _ in results} == {"first", "second"}
    # Tasks in flight at close were given back, and answered once, by the second worker.
    assert all(who == "second" for who, task in results if task >= 20)


def _press_ctrl_c() -> None:
    # A real SIGINT: it interrupts the main thread's blocking wait, as Ctrl-C would.
    os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture
def ctrl_c_raises() -> Any:
    """Python's own SIGINT handler, also where the suite runs as a background job (a shell
    starts those with SIGINT ignored, and Python then installs no handler)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_keyboard_interrupt_during_result_leaves_communicator_usable(
        connect: Connect, ctrl_c_raises: None) -> None:
    comm = connect()
    future = comm.task_send("nobody works on this")
    timer = threading.Timer(0.2, _press_ctrl_c)
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        future.result(timeout=TIMEOUT)
    timer.join()
    comm.add_rpc_subscriber(lambda _c, m: m, "alive")
    assert comm.rpc_send("alive", "yes").result(timeout=TIMEOUT) == "yes"
    portal_thread = comm._runtime.portal.thread
    comm.close()
    assert not portal_thread.is_alive()


def test_keyboard_interrupt_during_blocking_call_cancels_it(
        connect: Connect, ctrl_c_raises: None) -> None:
    comm = connect()
    cancelled = threading.Event()

    async def long_call() -> None:
        try:
            await trio.sleep(60)
        except trio.Cancelled:
            cancelled.set()
            raise

    timer = threading.Timer(0.3, _press_ctrl_c)
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        comm._call(long_call)  # any blocking call: the portal runs it as a Trio task
    timer.join()
    # The interrupted call's task in the portal was cancelled, not left running.
    assert cancelled.wait(TIMEOUT)
    comm.add_rpc_subscriber(lambda _c, m: m, "still-alive")
    assert comm.rpc_send("still-alive", 1).result(timeout=TIMEOUT) == 1


def test_garbage_collected_communicator_closes(names: Names) -> None:
    comm = kiwitrio_sync.connect(AMQP_URL, **names.kwargs())
    comm.add_rpc_subscriber(lambda _c, m: m, "collected")
    portal_thread = comm._runtime.portal.thread
    del comm
    gc.collect()
    portal_thread.join(TIMEOUT)
    assert not portal_thread.is_alive()


PROGRAM_THAT_DOES_NOT_CLOSE = """
import sys, threading
import kiwitrio_sync
comm = kiwitrio_sync.connect(sys.argv[1], message_exchange=sys.argv[2],
                             task_exchange=sys.argv[3], task_queue=sys.argv[4],
                             testing_mode=True)
started = threading.Event()
def stuck(_c, task):
    started.set()
    threading.Event().wait(3600)
comm.add_task_subscriber(stuck)
print("ready", flush=True)
started.wait(30)
print("started", flush=True)
# ...and the program ends here, without close().
"""


def test_program_exiting_without_close(connect: Connect, names: Names) -> None:
    sender = connect()
    with subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(PROGRAM_THAT_DOES_NOT_CLOSE), AMQP_URL,
         names.message_exchange, names.task_exchange, names.task_queue],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as process:
        try:
            assert process.stdout is not None and process.stderr is not None
            assert process.stdout.readline().strip() == "ready"
            future = sender.task_send("in progress at exit")
            assert process.stdout.readline().strip() == "started"
            assert process.wait(TIMEOUT) == 0
            stderr = process.stderr.read()
            assert "Traceback" not in stderr, stderr
        finally:
            process.kill()
    # Exiting gave the task back to the queue.
    with sender.task_queue(names.task_queue).next_task(timeout=TIMEOUT) as task:
        assert task is not None and task.redelivered
        task.process().set_result("finished here")
    assert future.result(timeout=TIMEOUT) == "finished here"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_forked_child_cannot_use_the_parents_communicator(connect: Connect) -> None:
    comm = connect()
    with warnings.catch_warnings():
        # Python 3.12+ warns that forking a multi-threaded process may deadlock; the child
        # here only checks that it is refused, and leaves with os._exit.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            comm.task_send("from the child")
        except kiwitrio_sync.CommunicatorClosed as exc:
            code = 0 if "forked" in str(exc) else 2
        except BaseException:
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not comm.is_closed()  # the parent's communicator is untouched


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signal masks")
def test_helper_threads_leave_ctrl_c_to_the_main_thread(connect: Connect) -> None:
    # The portal's thread blocks process signals (and the worker threads it starts inherit
    # that); a subscriber's own code runs with them unblocked, as in any thread of the
    # program, so that the processes it starts get SIGTERM and SIGINT.
    comm = connect()

    async def portal_mask() -> set[int]:
        return set(signal.pthread_sigmask(signal.SIG_BLOCK, []))

    assert {signal.SIGINT, signal.SIGTERM} <= comm._call(portal_mask)
    comm.add_rpc_subscriber(
        lambda _c, _m: sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])), "mask")
    blocked = comm.rpc_send("mask", "?").result(timeout=TIMEOUT)
    assert signal.SIGINT not in blocked and signal.SIGTERM not in blocked
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


CHILD_MASK = ("import signal; blocked = signal.pthread_sigmask(signal.SIG_BLOCK, []); "
              "print(int(signal.SIGTERM in blocked), int(signal.SIGINT in blocked))")


def _child_mask(_comm: Any, _msg: Any) -> str:
    return subprocess.run([sys.executable, "-c", CHILD_MASK], capture_output=True, text=True,
                          check=True, timeout=TIMEOUT).stdout.strip()


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signal masks")
def test_a_process_a_subscriber_starts_can_be_stopped(connect: Connect) -> None:
    # It used to inherit the worker thread's blocked SIGTERM and SIGINT, and ignore both.
    comm = connect()
    comm.add_rpc_subscriber(_child_mask, "child-mask")
    assert comm.rpc_send("child-mask", None).result(timeout=TIMEOUT) == "0 0"


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signal masks")
def test_a_process_a_kiwipy_subscriber_starts_can_be_stopped(
        kiwipy_connect: KiwipyConnect) -> None:
    comm = kiwipy_connect()
    comm.add_rpc_subscriber(_child_mask, "child-mask")
    assert comm.rpc_send("child-mask", None).result(timeout=TIMEOUT) == "0 0"


#: Trio's worker threads are shared by every Trio run of a process. Here, a run in the main
#: thread (signals unblocked) leaves the only idle one, which the portal then reuses for the
#: subscriber. A fresh process, so that no idle worker of earlier tests is reused instead.
PROGRAM_WITH_A_MAIN_THREAD_WORKER = """
import concurrent.futures, signal, sys
import trio
import kiwitrio_sync
if sys.argv[1] == "kiwipy":
    comm = kiwitrio_sync.RmqThreadCommunicator.connect(connection_params="memory://mask")
else:
    comm = kiwitrio_sync.connect("memory://mask")
comm.add_rpc_subscriber(lambda _c, _m: sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])),
                        "mask")
async def start_a_worker_thread_here():
    await trio.to_thread.run_sync(lambda: None)
trio.run(start_a_worker_thread_here)
blocked = comm.rpc_send("mask", "?").result(timeout=10)
while isinstance(blocked, concurrent.futures.Future):  # the kiwiPy face nests them
    blocked = blocked.result(timeout=10)
comm.close()
print(int(signal.SIGINT not in blocked and signal.SIGTERM not in blocked))
"""


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signal masks")
@pytest.mark.parametrize("face", ["kiwitrio_sync", "kiwipy"])
def test_subscribers_take_signals_in_shared_worker_threads_too(face: str) -> None:
    # Whichever run started the worker thread (here the main thread's), a subscriber's code
    # sees the process signals unblocked, as any thread of the program does.
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PROGRAM_WITH_A_MAIN_THREAD_WORKER), face],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1", result
