"""Subscribers may call the blocking API; future callbacks must not."""

import threading

import kiwitrio_sync


def delegate(comm, msg):
    # A subscriber runs in a worker thread: blocking calls are fine here.
    return comm.task_send(msg).result(timeout=5) + 1


with kiwitrio_sync.connect("memory://reentrant") as comm:
    comm.add_task_subscriber(lambda comm, task: task * 10)
    comm.add_rpc_subscriber(delegate, "delegator")
    print(comm.rpc_send("delegator", 4).result(timeout=5))  # 41

    outcome = []
    done = threading.Event()

    def callback(future):
        # Callbacks of pending futures run in the portal thread: a blocking call there
        # would wait for itself, so it raises instead.
        try:
            comm.rpc_send("delegator", 1)
        except kiwitrio_sync.BlockingCallInPortal as exc:
            outcome.append(type(exc).__name__)
        done.set()

    release = threading.Event()
    comm.add_rpc_subscriber(lambda comm, msg: release.wait(5), "slow")
    future = comm.rpc_send("slow", None)
    future.add_done_callback(callback)  # added while pending
    release.set()
    done.wait(5)
    print(outcome)  # ['BlockingCallInPortal']
