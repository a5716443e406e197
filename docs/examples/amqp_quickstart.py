"""Tasks, RPC and broadcasts against a local RabbitMQ, on names of our own.

testing_mode=True: the exchanges are auto-delete and the task queues expire a minute
after their last use, so nothing is left on the broker.
"""

import uuid

import trio

import kiwitrio

URL = "amqp://guest:guest@127.0.0.1:5672/"
PREFIX = f"docs-{uuid.uuid4().hex[:8]}"
OPTIONS = {
    "message_exchange": f"{PREFIX}.messages",
    "task_exchange": f"{PREFIX}.tasks",
    "task_queue": f"{PREFIX}.tasks",
    "testing_mode": True,
}


async def main():
    got_broadcast = trio.Event()

    async def on_broadcast(comm, body, sender, subject, correlation_id):
        print("broadcast:", body, sender, subject)
        got_broadcast.set()

    async with (
        kiwitrio.open_communicator(URL, **OPTIONS) as server,
        kiwitrio.open_communicator(URL, **OPTIONS) as client,
    ):
        print("broker:", server.server_properties["product"],
              server.server_properties["version"])
        await server.add_task_subscriber(lambda comm, task: task.upper())
        await server.add_rpc_subscriber(lambda comm, msg: {"status": "running"}, "proc-1")
        await server.add_broadcast_subscriber(on_broadcast)

        with trio.fail_after(10):
            print("task:", await (await client.task_send("hello")))
            print("rpc:", await (await client.rpc_send("proc-1", "status?")))
            await client.broadcast_send({"pk": 1}, sender="client", subject="hello.world")
            await got_broadcast.wait()


trio.run(main)
