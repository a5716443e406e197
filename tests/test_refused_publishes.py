"""Tasks and results the broker refuses for a while (negative publisher confirms).

A quorum queue whose leader's node died nacks what is routed to it until a new leader is
elected (seen on a three-node cluster, tests/faults/test_cluster.py). A task is then
published again until it is taken (or the time is up: the refusal is raised); a result too,
and a result refused throughout does not get its task acknowledged: the task is given back
and done again, so that its sender still gets an answer. Here the refusals are made by
wrapping the session's publish.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

import kiwitrio
from kiwitrio._backends import NegativeAck, OutgoingMessage
from kiwitrio._kinds import _replies, _tasks

from .conftest import OpenComm

DEADLINE = 20

Publish = Callable[..., Awaitable[None]]


class Refusing:
    """A session's publish that nacks the publishes ``refuse(exchange)`` picks."""

    def __init__(self, publish: Publish, refuse: Callable[[str], bool]) -> None:
        self._publish = publish
        self._refuse = refuse
        self.refused = 0

    async def __call__(self, exchange: str, routing_key: str, message: OutgoingMessage, *,
                       mandatory: bool) -> None:
        if self._refuse(exchange):
            self.refused += 1
            await trio.lowlevel.checkpoint()
            raise NegativeAck("the broker nacked the message: Basic.Nack (made by the test)")
        await self._publish(exchange, routing_key, message, mandatory=mandatory)


def refuse_first(count: int, *, of: Callable[[str], bool]) -> Callable[[str], bool]:
    """Refuse the first ``count`` publishes that ``of(exchange)`` picks."""
    seen = 0

    def refuse(exchange: str) -> bool:
        nonlocal seen
        if not of(exchange):
            return False
        seen += 1
        return seen <= count

    return refuse


def is_reply(exchange: str) -> bool:
    return exchange == ""  # replies go through the default exchange, tasks through their own


def is_task(exchange: str) -> bool:
    return exchange != ""


async def counting_subscriber(comm: kiwitrio.Communicator, runs: list[Any]) -> None:
    async def work(_comm: Any, task: Any) -> Any:
        runs.append(task)
        return f"done {task}"

    await comm.add_task_subscriber(work)


def refusing(comm: kiwitrio.Communicator, monkeypatch: pytest.MonkeyPatch,
             refuse: Callable[[str], bool]) -> Refusing:
    session = comm._ctx.session
    wrapper = Refusing(session.publish, refuse)
    monkeypatch.setattr(session, "publish", wrapper)
    return wrapper


@pytest.mark.parametrize("refused", [is_task, is_reply], ids=["task", "result"])
async def test_a_task_or_result_refused_for_a_while_still_gets_through(
        open_comm: OpenComm, monkeypatch: pytest.MonkeyPatch,
        refused: Callable[[str], bool]) -> None:
    # A task is sent once taken; a result still reaches the sender, and the task is not
    # given back (done once): its result went out in time.
    runs: list[Any] = []
    async with open_comm() as comm:
        await counting_subscriber(comm, runs)
        wrapper = refusing(comm, monkeypatch, refuse_first(3, of=refused))
        with trio.fail_after(DEADLINE):
            handle = await comm.task_send("job")
            assert await handle == "done job"
    assert wrapper.refused == 3
    assert runs == ["job"]


async def test_a_task_refused_throughout_raises_the_refusal(
        open_comm: OpenComm, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_tasks, "SEND_REFUSED_FOR", 0.3)
    async with open_comm() as comm:
        wrapper = refusing(comm, monkeypatch, is_task)
        with trio.fail_after(DEADLINE), pytest.raises(kiwitrio.DeliveryFailed,
                                                      match=r"Basic\.Nack"):
            await comm.task_send("job")
    assert wrapper.refused > 1  # published again before giving up


async def test_a_task_whose_result_is_refused_throughout_is_done_again(
        open_comm: OpenComm, monkeypatch: pytest.MonkeyPatch) -> None:
    # Acknowledging it would lose the result; given back, it is done again and answered.
    monkeypatch.setattr(_replies, "REPLY_REFUSED_FOR", 0.2)
    runs: list[Any] = []
    async with open_comm() as comm:
        await counting_subscriber(comm, runs)
        # Every reply of the first run is refused; the second run's goes through.
        wrapper = refusing(comm, monkeypatch, lambda exchange: is_reply(exchange)
                           and len(runs) < 2)
        with trio.fail_after(DEADLINE):
            handle = await comm.task_send("job")
            assert await handle == "done job"
    assert wrapper.refused > 1
    assert runs == ["job", "job"]
