"""kiwiPy code on kiwitrio's kiwiPy face, against a local RabbitMQ (unique names, testing mode)."""

import uuid

from kiwitrio_sync import kiwipy_compat as kiwipy  # kiwiPy's names; or install_kiwipy_alias()

PREFIX = f"docs-{uuid.uuid4().hex[:8]}"

comm = kiwipy.rmq.RmqThreadCommunicator.connect(
    connection_params={"url": "amqp://guest:guest@127.0.0.1:5672/"},
    message_exchange=f"{PREFIX}.messages",
    task_exchange=f"{PREFIX}.tasks",
    task_queue=f"{PREFIX}.tasks",
    task_prefetch_count=2,
    testing_mode=True,
    async_task_timeout=5,  # as in kiwiPy: each blocking call waits at most 5 s
)
with comm:
    print(comm.server_properties["version"])
    identifier = comm.add_rpc_subscriber(lambda comm, msg: f"pong {msg}")  # generated id
    print(comm.rpc_send(identifier, "ping").result(timeout=5))
    comm.add_rpc_subscriber(lambda comm, msg: f"process 42 got {msg}", "42")
    print(comm.rpc_send(42, "pause").result(timeout=5))  # any identifier, as a str
    comm.add_task_subscriber(lambda comm, task: task["x"] + 1)
    print(comm.task_send({"x": 41}).result(timeout=5))
    print(comm.task_send({"x": 0}, no_reply=True))  # None, as in kiwiPy
    try:
        comm.rpc_send("no-such-process", "ping")
    except kiwipy.UnroutableError:
        print("UnroutableError")
