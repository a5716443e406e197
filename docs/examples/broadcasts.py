"""Broadcasts and BroadcastFilter."""

import re

import trio

import kiwitrio


async def main():
    received = {"jobs": [], "not_state": [], "from_proc_1": [], "all": []}
    all_arrived = trio.Event()  # 3 + 4 + 2 + 5 deliveries are expected

    def inbox(name):
        async def subscriber(comm, body, sender, subject, correlation_id):
            received[name].append(body)
            if sum(len(bodies) for bodies in received.values()) == 14:
                all_arrived.set()
        return subscriber

    async with kiwitrio.open_communicator("memory://broadcasts") as comm:
        await comm.add_broadcast_subscriber(
            kiwitrio.BroadcastFilter(inbox("jobs"), subject="jobs.*"))
        await comm.add_broadcast_subscriber(
            kiwitrio.BroadcastFilter(inbox("not_state"),
                                     subject=re.compile(r"^(?!state_changed)")))
        await comm.add_broadcast_subscriber(
            kiwitrio.BroadcastFilter(inbox("from_proc_1"), sender="proc-1"))
        await comm.add_broadcast_subscriber(inbox("all"))

        await comm.broadcast_send("a", sender="proc-1", subject="jobs.new")
        await comm.broadcast_send("b", sender="proc-2", subject="jobs.x.y")  # '*' spans dots
        await comm.broadcast_send("c", sender="proc-2", subject="state_changed.x.y")
        await comm.broadcast_send("d", sender="proc-2", subject="jobs")     # no dot: no match
        await comm.broadcast_send("e")  # no subject, no sender: no filter applies

        with trio.fail_after(5):
            await all_arrived.wait()
        for name, bodies in received.items():
            print(f"{name:12} {sorted(bodies)}")


trio.run(main)
