"""What a task can come back with: a result, a remote exception, or nothing (no_reply)."""

import trio

import kiwitrio


async def picky(comm, task):
    if task != "easy":
        raise kiwitrio.TaskRejected()  # try the next subscriber, or give the task back
    return f"picky did {task}"


async def fallback(comm, task):
    if task == "bad":
        raise ValueError("cannot do bad tasks")
    return f"fallback did {task}"


async def main():
    async with kiwitrio.open_communicator("memory://outcomes") as comm:
        # Subscribers are tried in the order they were added.
        await comm.add_task_subscriber(picky)
        await comm.add_task_subscriber(fallback)
        with trio.fail_after(5):
            print(await (await comm.task_send("easy")))  # picky did easy
            print(await (await comm.task_send("hard")))  # fallback did hard
            try:
                await (await comm.task_send("bad"))
            except kiwitrio.RemoteException as exc:
                print(exc.remote_type, "-", exc.remote_message)  # ValueError - cannot ...
            handle = await comm.task_send("fire and forget", no_reply=True)
            print(handle.done(), handle.result())  # True None


trio.run(main)
