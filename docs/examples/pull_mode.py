"""Pull mode: take tasks one at a time instead of subscribing."""

import trio

import kiwitrio


async def main():
    async with kiwitrio.open_communicator("memory://pull") as comm:
        queue = await comm.task_queue("jobs")
        handles = [await queue.task_send(n) for n in range(3)]

        # One task, waiting up to 5 s for one to arrive.
        async with queue.next_task(timeout=5) as task:
            task.process().set_result(task.body * 10)  # replied and acked on leaving

        # The tasks there now; the loop ends when the queue is empty.
        async for task in queue:
            async with task.processing() as outcome:  # an exception here is the outcome
                outcome.set_result(task.body * 10)

        with trio.fail_after(5):
            print([await handle for handle in handles])  # [0, 10, 20]

        try:
            async with queue.next_task():  # timeout=None: do not wait at all
                pass
        except kiwitrio.QueueEmpty:
            print("queue is empty")


trio.run(main)
