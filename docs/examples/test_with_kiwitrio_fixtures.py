"""Tests of code that uses kiwitrio, with the fixtures of kiwitrio's pytest plugin.

Run with: pytest test_with_kiwitrio_fixtures.py (needs pytest-trio; the broker tests need
RabbitMQ at $KIWITRIO_TEST_URL, default amqp://guest:guest@127.0.0.1:5672/).
"""

import pytest
import trio

import kiwitrio


# The code under test: a task subscriber and an RPC subscriber.
async def square(comm, task):
    return task * task


def status(comm, msg):
    return {"state": "running", "asked": msg}


@pytest.mark.trio
async def test_square_in_memory(kiwitrio_memory_communicator):
    # No broker needed: an in-memory broker of this test's own.
    comm = kiwitrio_memory_communicator
    await comm.add_task_subscriber(square)
    with trio.fail_after(5):
        assert await (await comm.task_send(7)) == 49


@pytest.mark.trio
async def test_square_on_the_broker(kiwitrio_communicator):
    # RabbitMQ, on exchange and queue names unique to this test (deleted afterwards).
    comm = kiwitrio_communicator
    await comm.add_task_subscriber(square)
    with trio.fail_after(5):
        assert await (await comm.task_send(8)) == 64


@pytest.mark.trio
async def test_worker_and_client(kiwitrio_open, kiwitrio_names):
    # Two communicators on the same names; an RPC identifier unique to this test.
    identifier = kiwitrio_names.unique("status")
    async with kiwitrio_open() as worker, kiwitrio_open() as client:
        await worker.add_rpc_subscriber(status, identifier)
        with trio.fail_after(5):
            answer = await (await client.rpc_send(identifier, "now"))
        assert answer == {"state": "running", "asked": "now"}
        with pytest.raises(kiwitrio.UnroutableError):
            await client.rpc_send(kiwitrio_names.unique("nobody"), "now")


@pytest.mark.trio
async def test_another_queue(kiwitrio_open, kiwitrio_names):
    # kiwitrio_names.queue() names a further task queue, deleted afterwards too.
    async with kiwitrio_open(task_prefetch_count=2) as comm:
        queue = await comm.task_queue(kiwitrio_names.queue("jobs"))
        await queue.add_task_subscriber(square)
        with trio.fail_after(5):
            assert await (await queue.task_send(3)) == 9


def test_blocking_code(kiwitrio_sync_communicator):
    # kiwitrio_sync: no async needed; the communicator is closed after the test.
    comm = kiwitrio_sync_communicator
    comm.add_task_subscriber(lambda comm, task: task + 1)
    assert comm.task_send(41).result(timeout=5) == 42
