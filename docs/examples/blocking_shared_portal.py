"""Several blocking communicators on one portal thread (and one in-memory broker)."""

import kiwitrio_sync

with kiwitrio_sync.Portal() as portal:
    # memory:// brokers live in one Trio run, so only communicators that share a portal
    # share a memory broker.
    with (
        kiwitrio_sync.connect("memory://shared", portal=portal) as worker,
        kiwitrio_sync.connect("memory://shared", portal=portal) as client,
    ):
        worker.add_task_subscriber(lambda comm, task: -task)
        print(client.task_send(3).result(timeout=5))  # -3
    print("portal still running:", portal.thread.is_alive())  # True: it is ours to stop
print("portal stopped:", not portal.thread.is_alive())  # True
