"""Reconnection: a worker's connection is cut; it reconnects and its subscriber comes back.

The worker reaches RabbitMQ (127.0.0.1:5672) through a small TCP proxy, defined here, that
can cut its connection; the broker itself is not touched.
"""

import functools
import logging
import uuid

import trio

import kiwitrio

BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/"
PREFIX = f"docs-{uuid.uuid4().hex[:8]}"
OPTIONS = {
    "message_exchange": f"{PREFIX}.messages",
    "task_exchange": f"{PREFIX}.tasks",
    "task_queue": f"{PREFIX}.tasks",
    "testing_mode": True,
}


class Proxy:
    """Forwards connections to the broker; cut() drops them all."""

    def __init__(self):
        self.scopes = set()

    async def handle(self, client):
        with trio.CancelScope() as scope:
            self.scopes.add(scope)
            try:
                upstream = await trio.open_tcp_stream("127.0.0.1", 5672)
                async with client, upstream, trio.open_nursery() as nursery:
                    nursery.start_soon(pump, client, upstream, nursery.cancel_scope)
                    nursery.start_soon(pump, upstream, client, nursery.cancel_scope)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                self.scopes.discard(scope)

    def cut(self):
        for scope in self.scopes:
            scope.cancel()


async def pump(source, sink, scope):
    try:
        async for chunk in source:
            await sink.send_all(chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        scope.cancel()


async def main():
    logging.basicConfig(format="  log: %(name)s: %(message)s")
    logging.getLogger("aiormq").setLevel(logging.CRITICAL)  # its own report of the cut
    proxy, states = Proxy(), []
    async with trio.open_nursery() as nursery:
        serve = functools.partial(trio.serve_tcp, proxy.handle, 0, host="127.0.0.1")
        listeners = await nursery.start(serve)
        proxy_url = f"amqp://guest:guest@127.0.0.1:{listeners[0].socket.getsockname()[1]}/"
        policy = kiwitrio.ReconnectPolicy(initial_delay=0.1, max_delay=1.0)
        async with (
            kiwitrio.open_communicator(proxy_url, reconnect=policy,
                                       on_connection_state=states.append,
                                       **OPTIONS) as worker,
            kiwitrio.open_communicator(BROKER_URL, **OPTIONS) as client,
        ):
            await worker.add_task_subscriber(lambda comm, task: task * 2)
            with trio.fail_after(20):
                print(await (await client.task_send(1)))  # 2
                proxy.cut()  # the worker's connection is gone
                print(await (await client.task_send(2)))  # 4, once the worker is back
        nursery.cancel_scope.cancel()
    print([state.name for state in states])  # CONNECTED, RECONNECTING, CONNECTED, CLOSED


trio.run(main)
