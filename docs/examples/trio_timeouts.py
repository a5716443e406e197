"""Timeouts belong to the caller; cancelling a wait cancels only that wait."""

import trio

import kiwitrio


async def main():
    release = trio.Event()

    async def slow(comm, task):
        await release.wait()
        return "late result"

    async with kiwitrio.open_communicator("memory://timeouts") as comm:
        await comm.add_task_subscriber(slow)
        handle = await comm.task_send("t")

        with trio.move_on_after(0.2) as scope:
            await handle  # gives up after 0.2 s...
        print("gave up waiting:", scope.cancelled_caught, "- done:", handle.done())

        release.set()  # ...but the task went on, and the handle still works
        with trio.fail_after(5):
            print(await handle)

        idle = await comm.task_queue("nobody-works-here")
        pending = await idle.task_send("never done")
    # Leaving the block fails the results still pending.
    try:
        await pending
    except kiwitrio.CommunicatorClosed as exc:
        print("CommunicatorClosed:", exc)


trio.run(main)
