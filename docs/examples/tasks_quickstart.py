"""Tasks: a worker and a client on the in-memory broker."""

import trio

import kiwitrio


async def square(comm, task):  # a task subscriber: fn(communicator, task)
    return task * task


async def main():
    url = "memory://quickstart"  # same URL in one trio.run: same broker
    async with (
        kiwitrio.open_communicator(url) as worker,
        kiwitrio.open_communicator(url) as client,
    ):
        await worker.add_task_subscriber(square)
        handle = await client.task_send(7)  # returns once the broker has the task
        with trio.fail_after(5):
            print(await handle)  # 49


trio.run(main)
