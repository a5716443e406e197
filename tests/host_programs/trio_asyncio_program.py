"""A Trio program that runs asyncio code of its own through trio-asyncio, beside kiwitrio.

Run by tests/test_host_asyncio.py in a fresh interpreter:

    python trio_asyncio_program.py URL PREFIX auto|thread|trio-asyncio

The program opens trio-asyncio's loop itself, uses it before, while and after a kiwitrio
communicator (on the bridge named by the last argument) does tasks, RPC and broadcasts, and
prints ``OK <bridge>``.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import trio
import trio_asyncio

import kiwitrio


async def asyncio_work(value: int) -> int:
    # The program's own asyncio code: a timer and a callback on the running loop.
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    loop.call_later(0.01, future.set_result, value + 1)
    return await future


async def main(url: str, prefix: str, bridge: str) -> None:
    async with trio_asyncio.open_loop():
        assert await trio_asyncio.aio_as_trio(asyncio_work)(1) == 2
        options: dict[str, Any] = {
            "message_exchange": f"{prefix}.messages", "task_exchange": f"{prefix}.tasks",
            "task_queue": f"{prefix}.tasks", "testing_mode": True, "bridge": bridge}
        heard = trio.Event()

        async def on_task(_comm: Any, n: int) -> int:
            return int(await trio_asyncio.aio_as_trio(asyncio_work)(n))

        async def on_broadcast(_comm: Any, body: Any, *_rest: Any) -> None:
            # Subscribers may use the program's asyncio too.
            assert await trio_asyncio.aio_as_trio(asyncio_work)(body) == body + 1
            heard.set()

        with trio.fail_after(60):
            async with kiwitrio.open_communicator(url, **options) as comm:
                await comm.add_task_subscriber(on_task)
                await comm.add_rpc_subscriber(lambda _c, msg: f"{msg}!", f"{prefix}.proc")
                await comm.add_broadcast_subscriber(on_broadcast)
                assert await (await comm.task_send(41)) == 42
                assert await (await comm.rpc_send(f"{prefix}.proc", "play")) == "play!"
                await comm.broadcast_send(9, subject="x")
                assert await trio_asyncio.aio_as_trio(asyncio_work)(10) == 11
                await heard.wait()
        assert await trio_asyncio.aio_as_trio(asyncio_work)(100) == 101
    print(f"OK {bridge}", flush=True)


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:4])
