"""kiwitrio.as_completed: result handles in completion order, against both brokers."""

from __future__ import annotations

import gc
from typing import Any

import trio
import trio.testing

import kiwitrio

from .conftest import OpenComm

DEADLINE = 20


def _gated_subscriber(gates: dict[int, trio.Event]) -> Any:
    """A task subscriber that finishes task n once gates[n] is set; negative n raise."""

    async def work(_comm: Any, task: int) -> int:
        await gates[abs(task)].wait()
        if task < 0:
            raise ValueError(f"negative: {task}")
        return task * 10

    return work


async def test_handles_come_in_completion_order_failures_included(open_comm: OpenComm) -> None:
    gates = {n: trio.Event() for n in range(1, 4)}
    async with open_comm(task_prefetch_count=3) as comm:
        await comm.add_task_subscriber(_gated_subscriber(gates))
        handles = [await comm.task_send(task) for task in (1, -2, 3)]
        completed = kiwitrio.as_completed(handles)
        yielded = []
        with trio.fail_after(DEADLINE):
            for n in (3, 2, 1):  # finish them in reverse order, one at a time
                gates[n].set()
                yielded.append(await completed.__anext__())
            assert [handle async for handle in completed] == []
    assert yielded == [handles[2], handles[1], handles[0]]
    assert yielded[0].result() == 30
    exc = yielded[1].exception()
    assert isinstance(exc, kiwitrio.RemoteException) and exc.remote_type == "ValueError"


async def test_handles_nobody_else_holds_still_complete(open_comm: OpenComm) -> None:
    async with open_comm() as comm:
        await comm.add_task_subscriber(lambda _comm, task: task + 1)
        handles = [await comm.task_send(n) for n in range(3)]
        completed = kiwitrio.as_completed(iter(handles))
        del handles
        gc.collect()  # the reply router's references are weak: only the iteration's remain
        with trio.fail_after(DEADLINE):
            results = sorted([handle.result() async for handle in completed])
    assert results == [1, 2, 3]


async def test_done_handles_first_in_given_order_and_each_once() -> None:
    first, second = kiwitrio.ResultHandle.completed("a"), kiwitrio.ResultHandle.completed("b")
    with trio.fail_after(DEADLINE):
        got = [handle.result() async for handle in
               kiwitrio.as_completed([second, first, second])]
        assert got == ["b", "a"]
        assert [handle async for handle in kiwitrio.as_completed([])] == []


async def test_cancelling_the_wait_loses_nothing(names: Any) -> None:
    gates = {1: trio.Event()}
    async with kiwitrio.open_communicator(f"memory://{names.prefix}") as comm:
        await comm.add_task_subscriber(_gated_subscriber(gates))
        handle = await comm.task_send(1)
        completed = kiwitrio.as_completed([handle])
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:

                async def iterate() -> None:
                    async for _ in completed:
                        raise AssertionError("nothing is done yet")

                nursery.start_soon(iterate)
                await trio.testing.wait_all_tasks_blocked()  # it waits in the iteration
                nursery.cancel_scope.cancel()
            assert completed.remaining == 1 and not handle.done()
            gates[1].set()
            assert [done async for done in completed] == [handle]
    assert handle.result() == 10
