import trio

import kiwitrio

from .conftest import OpenComm


async def test_task_round_trip(open_comm: OpenComm) -> None:
    async with open_comm() as comm:
        await comm.add_task_subscriber(lambda _comm, task: task * 2)
        with trio.fail_after(10):
            assert await (await comm.task_send(21)) == 42


async def test_version_is_exported() -> None:
    assert kiwitrio.__version__
