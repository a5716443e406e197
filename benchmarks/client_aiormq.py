"""Benchmark client for the floor: raw aiormq (aio-pika's protocol layer) doing the same work.

    python benchmarks/client_aiormq.py --config JSON

The same AMQP work as ``client_aiopika.py``, without aio-pika's objects on the client: task
round trips (persistent, confirmed, ``mandatory`` publishes with ``reply_to`` and a
``correlation_id``; replies consumed with manual acks and routed by a dict of futures),
confirmed publishes, and consume + ack. It shows how much of aio-pika's own cost is the
protocol itself; the workers are the aio-pika reference's (``worker_aiopika.py``), so the
round trip's far end is the same for both. RPC, broadcasts and the in-flight workload are
not measured (the floor is for the per-message hot paths).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import platform
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import aiormq
from pamqp import commands as spec

from benchmarks._common import (
    DEFAULT_SIZE,
    PREFETCH,
    WINDOW,
    WORKER_PROCESSES,
    clean_up,
    client_parser,
    cpu_cost,
    emit_result,
    helpers,
    payload,
    run_workloads,
    size_label,
    worker_argv,
)
from benchmarks.worker_aiopika import task_names

IMPL = "aiormq"
WORKER = "worker_aiopika.py"
REPLY_PREFETCH = 256
REPLY_QUEUE_EXPIRES_MS = 30 * 60 * 1000
CONTENT_TYPE = "application/octet-stream"
PERSISTENT = 2


async def lanes(count: int, op: Callable[[], Awaitable[Any]], concurrency: int = WINDOW,
                ) -> float:
    remaining = iter(range(count))

    async def lane() -> None:
        for _ in remaining:
            await op()

    start = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(min(concurrency, count))))
    return time.perf_counter() - start


class TaskSender:
    """Confirmed persistent publishes; results routed by correlation id."""

    def __init__(self, connection: aiormq.abc.AbstractConnection, prefix: str) -> None:
        self._connection = connection
        self.exchange, self.queue = task_names(prefix)
        self._reply_queue = f"{prefix}.reply.{uuid.uuid4().hex}"
        self.pending: dict[str, asyncio.Future[bytes]] = {}

    async def open(self) -> None:
        self._channel = await self._connection.channel(publisher_confirms=True)
        await self._channel.exchange_declare(self.exchange, exchange_type="direct",
                                             durable=True)
        await self._channel.queue_declare(self.queue, durable=True)
        await self._channel.queue_bind(self.queue, self.exchange, routing_key=self.queue)
        self._replies = await self._connection.channel()
        await self._replies.basic_qos(prefetch_count=REPLY_PREFETCH)
        await self._replies.queue_declare(self._reply_queue, durable=True,
                                          arguments={"x-expires": REPLY_QUEUE_EXPIRES_MS})
        ok = await self._replies.basic_consume(self._reply_queue, self._on_reply)
        self._reply_tag: str = ok.consumer_tag  # type: ignore[assignment]

    async def close(self) -> None:
        await self._replies.basic_cancel(self._reply_tag)
        await self._replies.queue_delete(self._reply_queue)

    async def _on_reply(self, message: aiormq.abc.DeliveredMessage) -> None:
        future = self.pending.pop(message.header.properties.correlation_id or "", None)
        if future is not None and not future.done():
            future.set_result(message.body)
        await self._replies.basic_ack(message.delivery_tag)  # type: ignore[arg-type]

    async def send(self, body: bytes, no_reply: bool = False) -> asyncio.Future[bytes] | None:
        if no_reply:
            await self._channel.basic_publish(
                body, exchange=self.exchange, routing_key=self.queue, mandatory=True,
                properties=spec.Basic.Properties(content_type=CONTENT_TYPE,
                                                 delivery_mode=PERSISTENT))
            return None
        correlation_id = uuid.uuid4().hex
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.pending[correlation_id] = future
        try:
            await self._channel.basic_publish(
                body, exchange=self.exchange, routing_key=self.queue, mandatory=True,
                properties=spec.Basic.Properties(
                    content_type=CONTENT_TYPE, delivery_mode=PERSISTENT,
                    correlation_id=correlation_id, reply_to=self._reply_queue))
        except BaseException:
            self.pending.pop(correlation_id, None)
            raise
        return future


class Client:
    def __init__(self, config: dict[str, Any]) -> None:
        config["impl"] = IMPL
        self.config = config
        self.url: str = config["url"]
        self.prefix: str = config["prefix"]
        self.warmup: int = config["warmup"]
        self.leftovers: list[str] = []

    async def tasks(self) -> dict[str, Any]:
        prefix = f"{self.prefix}-tasks"
        self.leftovers.append(prefix)
        out: dict[str, Any] = {}
        with helpers() as group:
            for _ in range(WORKER_PROCESSES):
                group.spawn(worker_argv(WORKER, "tasks", self.url, prefix))
            connection = await aiormq.connect(self.url)
            try:
                sender = TaskSender(connection, prefix)
                await sender.open()
                await asyncio.get_running_loop().run_in_executor(None, group.wait_for, "ready")
                for size in self.config["task_sizes"]:
                    count = self.config["task_counts"][str(size)]
                    body = payload(size).encode()

                    async def round_trip(body: bytes = body) -> None:
                        await (await sender.send(body))  # type: ignore[misc]

                    await lanes(self.warmup, round_trip)
                    with cpu_cost(out, f"task_cpu_{size_label(size)}", count):
                        elapsed = await lanes(count, round_trip)
                    out[f"task_rate_{size_label(size)}"] = count / elapsed
                await sender.close()
            finally:
                await connection.close()
            await asyncio.get_running_loop().run_in_executor(None, group.stop)
        return out

    async def publish_consume(self) -> dict[str, Any]:
        prefix = f"{self.prefix}-pub"
        self.leftovers.append(prefix)
        count = self.config["publish_count"]
        body = payload(DEFAULT_SIZE).encode()
        out: dict[str, Any] = {}
        connection = await aiormq.connect(self.url)
        try:
            sender = TaskSender(connection, prefix)
            await sender.open()

            async def publish() -> None:
                await sender.send(body, no_reply=True)

            await lanes(self.warmup, publish)
            with cpu_cost(out, "publish_cpu", count):
                out["publish_rate"] = count / await lanes(count, publish)
            if "consume" in self.config["workloads"]:
                out.update(await self._consume(connection, sender.queue, count + self.warmup))
            await sender.close()
        finally:
            await connection.close()
        return out

    async def _consume(self, connection: aiormq.abc.AbstractConnection, queue: str,
                       total: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        seen = 0
        all_seen = asyncio.Event()
        channel = await connection.channel()
        await channel.basic_qos(prefetch_count=PREFETCH)

        async def consume(message: aiormq.abc.DeliveredMessage) -> None:
            nonlocal seen
            seen += 1
            if seen == total:
                all_seen.set()
            await channel.basic_ack(message.delivery_tag)  # type: ignore[arg-type]

        with cpu_cost(out, "consume_cpu", total):
            start = time.perf_counter()
            ok = await channel.basic_consume(queue, consume)
            await asyncio.wait_for(all_seen.wait(), 120)
            out["consume_rate"] = total / (time.perf_counter() - start)
        await channel.basic_cancel(ok.consumer_tag)  # type: ignore[arg-type]
        return out


def main() -> None:
    args = client_parser(__doc__.splitlines()[0]).parse_args()
    config = json.loads(args.config)
    client = Client(config)
    groups = [
        ("tasks", ["tasks"], lambda: asyncio.run(client.tasks())),
        ("publish+consume", ["publish", "consume"],
         lambda: asyncio.run(client.publish_consume())),
    ]
    try:
        metrics, errors = run_workloads(config, groups)
    finally:
        clean_up(config["url"], client.leftovers)
    emit_result(IMPL, metrics, errors, {"python": platform.python_version(),
                                        "aiormq": importlib.metadata.version("aiormq")})


if __name__ == "__main__":
    main()
