"""Pull mode with the blocking API."""

import kiwitrio_sync

with kiwitrio_sync.connect("memory://blocking-pull") as comm:
    queue = comm.task_queue("jobs")

    with queue.next_task(fail=False) as task:  # an empty queue answers at once: None
        print("nothing yet:", task)

    futures = [queue.task_send(n) for n in range(3)]

    with queue.next_task() as task:  # the task at the head; QueueEmpty if there is none
        task.process().set_result(task.body * 10)  # replied and acked on leaving

    for task in queue:  # the tasks waiting now
        with task.processing() as outcome:  # an exception here becomes the outcome
            outcome.set_result(task.body * 10)

    print([future.result(timeout=5) for future in futures])  # [0, 10, 20]
