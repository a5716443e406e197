"""Small plumpy-like fakes, written for these tests (plumpy itself is not a dependency).

They use kiwiPy the way plumpy 0.26 and AiiDA do, through ``import kiwipy``, so they need
:func:`kiwitrio_sync.install_kiwipy_alias` to have run first:

- :class:`LoopCommunicator` wraps a communicator so that subscribers run as coroutines on an
  asyncio loop, each returning a kiwiPy future of its outcome (plumpy's ``convert_to_comm``
  and ``plum_to_kiwi_future``): a task or RPC subscriber's reply is then a future of a future;
- :class:`Process` subscribes for RPC as ``str(pid)`` and broadcasts each state change as
  ``broadcast_send(None, sender=pid, subject="state_changed.<from>.<to>")``; it answers
  ``pause``, ``play``, ``kill``, ``status`` and ``finish`` messages with a future scheduled on
  its loop (plumpy's ``_schedule_rpc``), so the controller's reply is nested once more;
- :class:`ProcessLauncher` launches a process from a task (plumpy's launcher): with
  ``nowait`` it answers with the pid, else with the process's result once it ends;
- :class:`ProcessController` is plumpy's ``RemoteProcessThreadController``: RPC to the pid
  itself (an int, as AiiDA's pks are), tasks to launch;
- :func:`unwrap` is plumpy's ``unwrap_kiwi_future``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any

import kiwipy  # type: ignore[import-not-found]  # resolved by install_kiwipy_alias()


class KilledError(Exception):
    """The process was killed."""


def unwrap(future: concurrent.futures.Future[Any]) -> concurrent.futures.Future[Any]:
    """A future of the final value of a chain of futures (plumpy's ``unwrap_kiwi_future``)."""
    unwrapped: concurrent.futures.Future[Any] = kiwipy.Future()

    def step(done: concurrent.futures.Future[Any]) -> None:
        if done.cancelled():
            unwrapped.cancel()
            return
        with kiwipy.capture_exceptions(unwrapped):
            value = done.result()
            if isinstance(value, kiwipy.Future):
                value.add_done_callback(step)
            else:
                unwrapped.set_result(value)

    future.add_done_callback(step)
    return unwrapped


def _to_kiwi_future(task: asyncio.Future[Any]) -> concurrent.futures.Future[Any]:
    kiwi_future: concurrent.futures.Future[Any] = kiwipy.Future()

    def done(_: asyncio.Future[Any]) -> None:
        if task.cancelled():
            kiwi_future.cancel()
            return
        with kiwipy.capture_exceptions(kiwi_future):
            kiwi_future.set_result(task.result())

    task.add_done_callback(done)
    return kiwi_future


class LoopCommunicator(kiwipy.Communicator):  # type: ignore[misc]
    """Runs subscribers on ``loop``; each call returns a kiwiPy future of the outcome."""

    def __init__(self, communicator: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._communicator = communicator
        self._loop = loop

    def _convert(self, subscriber: Callable[..., Any]) -> Callable[..., Any]:
        def converted(communicator: Any, *args: Any) -> concurrent.futures.Future[Any]:
            outcome: concurrent.futures.Future[Any] = kiwipy.Future()

            async def run() -> Any:
                result = subscriber(communicator, *args)
                if asyncio.iscoroutine(result):
                    result = await result
                return result

            def start() -> None:
                kiwipy.chain(_to_kiwi_future(self._loop.create_task(run())), outcome)

            self._loop.call_soon_threadsafe(start)
            return outcome

        return converted

    def add_rpc_subscriber(self, subscriber: Any, identifier: Any = None) -> Any:
        return self._communicator.add_rpc_subscriber(self._convert(subscriber), identifier)

    def remove_rpc_subscriber(self, identifier: Any) -> None:
        self._communicator.remove_rpc_subscriber(identifier)

    def add_task_subscriber(self, subscriber: Any, identifier: Any = None) -> Any:
        return self._communicator.add_task_subscriber(self._convert(subscriber), identifier)

    def remove_task_subscriber(self, identifier: Any) -> None:
        self._communicator.remove_task_subscriber(identifier)

    def add_broadcast_subscriber(self, subscriber: Any, identifier: Any = None) -> Any:
        return self._communicator.add_broadcast_subscriber(self._convert(subscriber),
                                                           identifier)

    def remove_broadcast_subscriber(self, identifier: Any) -> None:
        self._communicator.remove_broadcast_subscriber(identifier)

    def task_send(self, task: Any, no_reply: bool = False) -> Any:
        return self._communicator.task_send(task, no_reply)

    def rpc_send(self, recipient_id: Any, msg: Any) -> Any:
        return self._communicator.rpc_send(recipient_id, msg)

    def broadcast_send(self, body: Any, sender: Any = None, subject: Any = None,
                       correlation_id: Any = None) -> Any:
        return self._communicator.broadcast_send(body, sender, subject, correlation_id)

    def is_closed(self) -> bool:
        return bool(self._communicator.is_closed())

    def close(self) -> None:
        self._communicator.close()


class Process:
    """Steps until it gets a ``finish`` message (or is killed); pausable. Lives on ``loop``."""

    def __init__(self, pid: int, communicator: LoopCommunicator,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.pid = pid
        self.steps = 0
        self.state = "created"
        self._communicator = communicator
        self._loop = loop
        self._playing = asyncio.Event()
        self._playing.set()
        self._finish = asyncio.Event()
        self._killed = False
        communicator.add_rpc_subscriber(self.message_receive, identifier=str(pid))

    def _transition(self, new_state: str) -> None:
        old, self.state = self.state, new_state
        try:
            self._communicator.broadcast_send(None, sender=self.pid,
                                              subject=f"state_changed.{old}.{new_state}")
        except kiwipy.TimeoutError:  # as plumpy: a state broadcast that timed out is logged
            pass

    def message_receive(self, _communicator: Any, msg: dict[str, Any]) -> Any:
        # Runs on the loop; answer with a future resolved on the loop (plumpy's _schedule_rpc).
        answer: concurrent.futures.Future[Any] = kiwipy.Future()

        def handle() -> None:
            with kiwipy.capture_exceptions(answer):
                answer.set_result(self._on_message(msg))

        self._loop.call_soon(handle)
        return answer

    def _on_message(self, msg: dict[str, Any]) -> Any:
        intent = msg["intent"]
        if intent == "status":
            return {"state": self.state, "steps": self.steps}
        if self.state in ("finished", "killed"):
            return False
        if intent == "pause":
            self._playing.clear()
            self._transition("paused")
        elif intent == "play":
            self._playing.set()
            self._transition("running")
        elif intent == "kill":
            self._killed = True
            self._playing.set()
            self._finish.set()
        elif intent == "finish":
            self._finish.set()
        else:
            raise ValueError(f"unknown intent {intent!r}")
        return True

    async def run(self) -> dict[str, Any]:
        self._transition("running")
        try:
            while not self._finish.is_set():
                await self._playing.wait()
                self.steps += 1
                await asyncio.sleep(0.005)
            if self._killed:
                self._transition("killed")
                raise KilledError(f"process {self.pid} was killed")
            self._transition("finished")
            return {"pid": self.pid, "steps": self.steps}
        finally:
            self._communicator.remove_rpc_subscriber(str(self.pid))


class ProcessLauncher:
    """Task subscriber: ``{"task": "launch", "pid": int, "nowait": bool}`` starts a process."""

    def __init__(self, communicator: LoopCommunicator, loop: asyncio.AbstractEventLoop) -> None:
        self._communicator = communicator
        self._loop = loop
        self.running: set[asyncio.Task[Any]] = set()

    async def __call__(self, _communicator: Any, task: dict[str, Any]) -> Any:
        if task.get("task") != "launch":
            raise kiwipy.TaskRejected(f"not a launch task: {task!r}")
        process = Process(task["pid"], self._communicator, self._loop)
        if task.get("nowait"):
            running = self._loop.create_task(process.run())
            self.running.add(running)
            running.add_done_callback(self._ended)
            return process.pid
        return await process.run()

    def _ended(self, running: asyncio.Task[Any]) -> None:
        self.running.discard(running)
        if not running.cancelled():
            running.exception()  # a killed process ends in KilledError: nobody waits for it


class ProcessController:
    """plumpy's RemoteProcessThreadController: every call returns the communicator's future."""

    def __init__(self, communicator: Any) -> None:
        self._communicator = communicator

    def get_status(self, pid: int) -> Any:
        return self._communicator.rpc_send(pid, {"intent": "status"})

    def pause_process(self, pid: int) -> Any:
        return self._communicator.rpc_send(pid, {"intent": "pause"})

    def play_process(self, pid: int) -> Any:
        return self._communicator.rpc_send(pid, {"intent": "play"})

    def kill_process(self, pid: int) -> Any:
        return self._communicator.rpc_send(pid, {"intent": "kill"})

    def finish_process(self, pid: int) -> Any:
        return self._communicator.rpc_send(pid, {"intent": "finish"})

    def launch_process(self, pid: int, nowait: bool = False, no_reply: bool = False) -> Any:
        return self._communicator.task_send({"task": "launch", "pid": pid, "nowait": nowait},
                                            no_reply=no_reply)


def run_worker(communicator: Any, stop: threading.Event, ready: threading.Event) -> None:
    """A daemon worker: launch processes from tasks on an asyncio loop until ``stop`` is set;
    ``ready`` is set once it takes tasks."""
    # A loop of asyncio's own, made explicitly: whatever else this process imported (pytest
    # may have imported trio-asyncio, which replaces asyncio.new_event_loop).
    loop = asyncio.SelectorEventLoop()
    try:
        loop_communicator = LoopCommunicator(communicator, loop)
        launcher = ProcessLauncher(loop_communicator, loop)
        loop_communicator.add_task_subscriber(launcher)
        stopping = asyncio.Event()
        threading.Thread(target=lambda: (stop.wait(), loop.call_soon_threadsafe(stopping.set)),
                         daemon=True).start()

        async def serve() -> None:
            ready.set()
            await stopping.wait()
            for running in list(launcher.running):
                running.cancel()

        loop.run_until_complete(serve())
    finally:
        loop.close()
