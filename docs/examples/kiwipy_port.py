"""kiwiPy-style code on kiwitrio_sync, against a local RabbitMQ (unique names, testing mode)."""

import uuid

import kiwitrio_sync as kiwipy  # the names kiwiPy code uses

PREFIX = f"docs-{uuid.uuid4().hex[:8]}"

comm = kiwipy.RmqThreadCommunicator.connect(
    connection_params={"url": "amqp://guest:guest@127.0.0.1:5672/"},
    message_exchange=f"{PREFIX}.messages",
    task_exchange=f"{PREFIX}.tasks",
    task_queue=f"{PREFIX}.tasks",
    task_prefetch_count=2,
    testing_mode=True,
    async_task_timeout=5,  # a kiwiPy option: accepted and ignored
)
with comm:
    print(comm.server_properties["version"])
    identifier = comm.add_rpc_subscriber(lambda comm, msg: f"pong {msg}")  # generated id
    print(comm.rpc_send(identifier, "ping").result(timeout=5))
    comm.add_task_subscriber(lambda comm, task: task["x"] + 1)
    print(comm.task_send({"x": 41}).result(timeout=5))
    try:
        comm.rpc_send("no-such-process", "ping")
    except kiwipy.UnroutableError:
        print("UnroutableError")
