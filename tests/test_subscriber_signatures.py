"""Subscribers are checked when added: a callable that cannot take the arguments it would be
called with is refused at once with TypeError, naming the signature it needs."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import trio

import kiwitrio

from .conftest import OpenComm

DEADLINE = 10
TASK = r"fn\(communicator, task\)"
RPC = r"fn\(communicator, msg\)"
BROADCAST = r"fn\(communicator, body, sender, subject, correlation_id\)"


def one_argument(msg: Any) -> Any:
    return msg


def broadcast_without_correlation_id(comm: Any, body: Any, sender: Any, subject: Any) -> None:
    pass


async def test_a_task_subscriber_with_the_wrong_signature_is_refused(open_comm: OpenComm) -> None:
    async with open_comm() as comm:
        with pytest.raises(TypeError, match=TASK):
            await comm.add_task_subscriber(one_argument)
        queue = await comm.task_queue(comm._default_queue.name + ".other")
        with pytest.raises(TypeError, match=TASK):
            await queue.add_task_subscriber(lambda comm, task, extra: None)
        # Refused before anything was registered: the right one still subscribes.
        await comm.add_task_subscriber(lambda comm, task: task * 2)
        with trio.fail_after(DEADLINE):
            assert await (await comm.task_send(21)) == 42


async def test_an_rpc_subscriber_with_the_wrong_signature_is_refused(open_comm: OpenComm) -> None:
    async with open_comm() as comm:
        with pytest.raises(TypeError, match=RPC) as caught:
            await comm.add_rpc_subscriber(one_argument, "sig-check")
        assert "one_argument" in str(caught.value)
        # The identifier was not taken by the refused one.
        await comm.add_rpc_subscriber(lambda comm, msg: msg, "sig-check")


async def test_a_broadcast_subscriber_with_the_wrong_signature_is_refused(
        open_comm: OpenComm) -> None:
    async with open_comm() as comm:
        with pytest.raises(TypeError, match=BROADCAST):
            await comm.add_broadcast_subscriber(broadcast_without_correlation_id)
        with pytest.raises(TypeError, match=BROADCAST):
            await comm.add_broadcast_subscriber(
                kiwitrio.BroadcastFilter(broadcast_without_correlation_id, subject="a.*"))
        with pytest.raises(TypeError, match=BROADCAST):
            await comm.add_broadcast_subscriber(one_argument, ordered=True)


async def test_callables_that_fit_are_accepted(open_comm: OpenComm) -> None:
    class Handler:
        def __call__(self, comm: Any, *args: Any, **kwargs: Any) -> None:
            pass

        async def task(self, comm: Any, task: Any) -> Any:
            return task

    async def defaults(comm: Any, body: Any, sender: Any = None, subject: Any = None,
                       correlation_id: Any = None, extra: int = 0) -> None:
        pass

    async with open_comm() as comm:
        await comm.add_task_subscriber(Handler().task)
        await comm.add_task_subscriber(functools.partial(lambda prefix, comm, task: task, "p"))
        await comm.add_rpc_subscriber(Handler(), "sig-fits")
        await comm.add_broadcast_subscriber(defaults)
        await comm.add_broadcast_subscriber(kiwitrio.BroadcastFilter(Handler(), sender="x"))
        # A callable whose signature cannot be read is given its chance.
        await comm.add_rpc_subscriber(max, "sig-builtin")
