"""The three kinds of subscriber: async, plain (in a thread), returning a future."""

import concurrent.futures
import threading
import time

import trio

import kiwitrio


async def async_subscriber(comm, task):  # a Trio task in the communicator's nursery
    await trio.sleep(0.1)
    return f"async, in {threading.current_thread().name}"


def blocking_subscriber(comm, task):  # a worker thread: it may block
    time.sleep(0.1)
    return f"plain, in a worker thread: {threading.current_thread() is not threading.main_thread()}"


executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)


def future_subscriber(comm, task):  # the reply waits for the future
    return executor.submit(lambda: f"from a future: {task * 2}")


async def main():
    async with kiwitrio.open_communicator("memory://subscribers") as comm:
        queues = {}
        for name, subscriber in [("a", async_subscriber), ("b", blocking_subscriber),
                                 ("c", future_subscriber)]:
            queues[name] = await comm.task_queue(name)
            await queues[name].add_task_subscriber(subscriber)
        with trio.fail_after(5):
            for queue in queues.values():
                print(await (await queue.task_send(21)))
    executor.shutdown()


trio.run(main)
