"""A worker whose connection drops mid-task: the broker gives the task to another worker."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import kiwitrio

from .conftest import AMQP_URL, Names, delete_queues
from .tcp_proxy import open_tcp_proxy

DEADLINE = 20


async def test_task_of_a_worker_that_lost_its_connection_is_redelivered(names: Names) -> None:
    started = trio.Event()

    async def stuck(_comm: Any, _task: Any) -> str:
        started.set()
        await trio.sleep_forever()
        return "never"

    try:
        async with open_tcp_proxy() as proxy, \
                kiwitrio.open_communicator(AMQP_URL, **names.kwargs()) as sender:
            handle = await sender.task_send("survive me")
            with trio.fail_after(DEADLINE):
                async with kiwitrio.open_communicator(proxy.url(), **names.kwargs()) as doomed:
                    await doomed.add_task_subscriber(stuck)
                    await started.wait()
                    assert proxy.cut() == 1
                    async with kiwitrio.open_communicator(AMQP_URL, **names.kwargs()) as rescuer:
                        await rescuer.add_task_subscriber(lambda _c, task: f"rescued {task}")
                        assert await handle == "rescued survive me"
    finally:
        await delete_queues(AMQP_URL, {names.task_queue}, names)


async def test_send_over_a_dead_connection_raises(names: Names) -> None:
    try:
        async with open_tcp_proxy() as proxy, \
                kiwitrio.open_communicator(proxy.url(), **names.kwargs()) as comm:
            proxy.cut()
            with trio.fail_after(DEADLINE), pytest.raises(kiwitrio.KiwitrioError):
                # The first sends may still be written to the socket before the loss is seen;
                # none may be reported as delivered without the broker's confirm.
                for _ in range(100):
                    await comm.task_send("x")
    finally:
        await delete_queues(AMQP_URL, {names.task_queue}, names)
