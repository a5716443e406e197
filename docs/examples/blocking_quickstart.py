"""kiwitrio_sync: the blocking API, with plain functions as subscribers."""

import threading

import kiwitrio_sync

received = threading.Event()


def double(comm, task):  # runs in a worker thread
    return task * 2


def status(comm, msg):
    return {"state": "running"}


def on_broadcast(comm, body, sender, subject, correlation_id):
    print("broadcast:", body, sender, subject)
    received.set()


with kiwitrio_sync.connect("memory://blocking") as comm:
    comm.add_task_subscriber(double)
    comm.add_rpc_subscriber(status, "proc-1")
    comm.add_broadcast_subscriber(kiwitrio_sync.BroadcastFilter(on_broadcast, subject="jobs.*"))

    future = comm.task_send(21)  # returns once the broker has the task
    print(future.result(timeout=5))  # 42
    print(comm.rpc_send("proc-1", "status?").result(timeout=5))
    print(comm.broadcast_send("hello", sender="me", subject="jobs.1"))  # True
    received.wait(5)

    try:
        comm.rpc_send("nobody", 1)  # errors come from the call itself
    except kiwitrio_sync.UnroutableError:
        print("nobody subscribes to 'nobody'")

    slow = comm.task_queue("nobody-works-here").task_send("waits")
    try:
        slow.result(timeout=0.1)
    except kiwitrio_sync.TimeoutError:
        print("no result yet (the task is still queued)")
# Leaving the block closed the communicator and its portal thread.
print(comm.is_closed())  # True
