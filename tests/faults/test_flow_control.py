"""Broker flow control: a memory alarm on a private node blocks publishing (issue 15).

RabbitMQ answers a resource alarm by blocking the connections that publish and telling them
(``connection.blocked``). kiwitrio shows it in ``connection_state`` (``BLOCKED``), logs it
once, and lets the caller's own deadline end a send that waits; a blocking send interrupted
by ``close()`` says its fate is unknown. When the alarm lifts, the state goes back to
``CONNECTED`` and sends go through. The alarm is raised with
``rabbitmqctl set_vm_memory_high_watermark 0`` on a node of this module's own.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable

import pytest
import trio

import kiwitrio
import kiwitrio_sync

from ..conftest import Names
from .private_broker import PrivateBroker

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

DEADLINE = 30.0
FAST = kiwitrio.ReconnectPolicy(initial_delay=0.05, max_delay=0.5, jitter=0.05,
                                startup_give_up_after=20.0)


async def _alarm(broker: PrivateBroker, on: bool) -> None:
    # 0 puts the node in a memory alarm at once; 0.4 is RabbitMQ's default watermark.
    await trio.to_thread.run_sync(broker.ctl, "set_vm_memory_high_watermark",
                                  "0" if on else "0.4")


async def _until(predicate: Callable[[], bool], what: str) -> None:
    try:
        with trio.fail_after(DEADLINE):
            while not predicate():  # noqa: ASYNC110 - a property, no event to wait on
                await trio.sleep(0.02)
    except trio.TooSlowError:
        raise AssertionError(f"not {what} within {DEADLINE} s") from None


async def test_a_memory_alarm_is_visible_and_deadlines_still_hold(
    private_broker: PrivateBroker, names: Names, caplog: pytest.LogCaptureFixture
) -> None:
    states: list[kiwitrio.ConnectionState] = []
    async with kiwitrio.open_communicator(
        private_broker.url, reconnect=FAST, on_connection_state=states.append,
        **names.kwargs(),
    ) as comm:
        await comm.add_task_subscriber(
            lambda _c, task: task + 1 if isinstance(task, int) else task)
        with trio.fail_after(DEADLINE):
            assert await (await comm.task_send(1)) == 2
        try:
            await _alarm(private_broker, on=True)
            # RabbitMQ blocks (and tells) a connection once it publishes under the alarm:
            # sends, each ended by the caller's own deadline, until the state says so.
            with trio.fail_after(DEADLINE):
                while comm.connection_state is not kiwitrio.ConnectionState.BLOCKED:
                    with trio.move_on_after(1.0):
                        await comm.task_send("under the alarm", no_reply=True)
            # Blocked: a send waits, and the caller's deadline still ends it.
            with trio.move_on_after(0.5) as waited:
                await comm.task_send("blocked", no_reply=True)
            assert waited.cancelled_caught, "a send completed while the connection was blocked"
        finally:
            await _alarm(private_broker, on=False)
        await _until(lambda: comm.connection_state is kiwitrio.ConnectionState.CONNECTED,
                     "CONNECTED")
        with trio.fail_after(DEADLINE):
            assert await (await comm.task_send(3)) == 4
    blocked = [r.getMessage() for r in caplog.records
               if r.name.startswith("kiwitrio") and "blocks publishing" in r.getMessage()]
    assert len(blocked) == 1, blocked
    assert "127.0.0.1" in blocked[0] and "guest:guest" not in blocked[0]
    assert any("unblocked publishing" in r.getMessage() for r in caplog.records
               if r.levelno == logging.WARNING and r.name.startswith("kiwitrio"))
    assert kiwitrio.ConnectionState.BLOCKED in states
    assert states[states.index(kiwitrio.ConnectionState.BLOCKED) + 1:][:1] == [
        kiwitrio.ConnectionState.CONNECTED]


async def test_a_blocked_sync_send_interrupted_by_close_says_its_fate_is_unknown(
    private_broker: PrivateBroker, names: Names
) -> None:
    """The reported case: a blocking task_send held by a memory alarm, then close() from
    another thread. The sender hears SendOutcomeUnknown, not CommunicatorClosed."""
    comm = await trio.to_thread.run_sync(lambda: kiwitrio_sync.connect(
        private_broker.url, reconnect=FAST, **names.kwargs()))
    outcome: concurrent.futures.Future[BaseException | None] = concurrent.futures.Future()

    def send() -> None:
        try:
            comm.task_send("maybe", no_reply=True)
        except BaseException as exc:  # handed to the test as it is
            outcome.set_result(exc)
        else:
            outcome.set_result(None)

    try:
        await trio.to_thread.run_sync(comm.task_send, "before", True)
        await _alarm(private_broker, on=True)
        sender = threading.Thread(target=send, name="blocked-sender")
        sender.start()
        await _until(lambda: comm.connection_state is kiwitrio.ConnectionState.BLOCKED,
                     "BLOCKED")
        assert not outcome.done(), outcome.result()
        await trio.to_thread.run_sync(comm.close)
        error = await trio.to_thread.run_sync(outcome.result, DEADLINE)
        await trio.to_thread.run_sync(sender.join, DEADLINE)
    finally:
        await _alarm(private_broker, on=False)
        await trio.to_thread.run_sync(comm.close)
    assert isinstance(error, kiwitrio.SendOutcomeUnknown), repr(error)
    assert "may or may not have been stored" in str(error)
