"""A worker that leaves its block mid-task gives the task back; another one finishes it."""

import trio

import kiwitrio

URL = "memory://redelivery"


def rescue(comm, task):
    # current_delivery() tells a subscriber about the message it is handling.
    return f"{task}: done (redelivered: {kiwitrio.current_delivery().redelivered})"


async def main():
    started = trio.Event()

    async def never_finishes(comm, task):
        started.set()
        await trio.sleep_forever()

    async with kiwitrio.open_communicator(URL) as client:
        handle = await client.task_send("important")
        with trio.fail_after(5):
            async with kiwitrio.open_communicator(URL) as worker:
                await worker.add_task_subscriber(never_finishes)
                await started.wait()
            # The worker's block is left: its unfinished task is back in the queue.
            async with kiwitrio.open_communicator(URL) as rescuer:
                await rescuer.add_task_subscriber(rescue)
                print(await handle)  # important: done (redelivered: True)


trio.run(main)
