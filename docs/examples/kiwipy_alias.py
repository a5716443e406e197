"""`import kiwipy` resolving to kiwitrio, for code written against kiwiPy (plumpy, AiiDA)."""

import threading

import kiwitrio_sync

kiwitrio_sync.install_kiwipy_alias()  # first, before anything imports kiwipy (plumpy...)

import kiwipy  # noqa: E402 - kiwitrio_sync.kiwipy_compat from now on


def unwrap(future):
    """The final value of a future of a future... (what plumpy's unwrap_kiwi_future does)."""
    while isinstance(future, kiwipy.Future):
        future = future.result(timeout=5)
    return future


# A LocalCommunicator runs on kiwitrio's in-memory broker: no RabbitMQ needed here.
with kiwipy.LocalCommunicator() as comm:
    answer = kiwipy.Future()

    def pause(comm, msg):
        return answer  # a subscriber that answers later, as plumpy's processes do

    comm.add_rpc_subscriber(pause, identifier=str(1234))  # plumpy subscribes str(pid)...
    future = comm.rpc_send(1234, {"intent": "pause"})  # ...and sends to the pid itself
    pending = future.result(timeout=5)  # kiwiPy's shape: a future of a future
    print(type(pending).__name__, pending.done())  # Future False
    answer.set_result(True)
    print(unwrap(future))  # True

    states = []
    both = threading.Event()

    def on_state(comm, body, sender, subject, correlation_id):  # a worker thread
        states.append(subject)
        if len(states) == 2:
            both.set()

    # kiwiPy's filter: "*" and a prefix match on subjects, equality for other values.
    comm.add_broadcast_subscriber(kiwipy.BroadcastFilter(on_state, sender=1234))
    comm.broadcast_send(None, sender=1234, subject="state_changed.running.paused")
    comm.broadcast_send(None, sender=99, subject="state_changed.created.running")
    comm.broadcast_send(None, sender=1234, subject="state_changed.paused.running")
    both.wait(5)  # broadcasts arrive asynchronously, one at a time and in order
    print(states)  # ['state_changed.running.paused', 'state_changed.paused.running']
