"""Benchmark client for the reference: plain asyncio aio-pika doing the same AMQP work.

    python benchmarks/client_aiopika.py --config JSON

What kiwitrio does for each message, written directly against aio-pika's public API, with no
envelope and no codec (the body is the bytes): tasks are persistent, published with publisher
confirms and ``mandatory`` to a durable queue through a direct exchange, with ``reply_to`` and a
``correlation_id``; replies come back on the client's reply queue (prefetch 256, manual acks),
where a dict of futures routes them; results are persistent and the reply queue is durable with
an expiry, as kiwitrio's (so that results survive a reconnection). Workers are
``worker_aiopika.py`` processes. RPC uses aio-pika's own pattern (``aio_pika.patterns.RPC``),
the reference the RPC target names. Broadcasts go through a topic exchange (non-persistent,
confirmed, 66 s expiration) to one exclusive queue per listener; the filters run in Python in
the listener.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import platform
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import aio_pika
from aio_pika.patterns import RPC

from benchmarks._common import (
    DEFAULT_SIZE,
    PREFETCH,
    RPC_CONCURRENCY,
    SENDER,
    SUBJECT,
    WINDOW,
    WORKER_PROCESSES,
    Helpers,
    MemoryProbe,
    broadcast_timeout,
    clean_up,
    client_parser,
    cpu_cost,
    emit_result,
    helpers,
    inflight_metrics,
    latency_summary,
    payload,
    run_workloads,
    size_label,
    spawn_listeners,
    worker_argv,
)
from benchmarks.worker_aiopika import broadcast_exchange, declare_task_queue

IMPL = "aio-pika"
WORKER = "worker_aiopika.py"
REPLY_PREFETCH = 256  # as kiwitrio's reply consumer
REPLY_QUEUE_EXPIRES_MS = 30 * 60 * 1000  # as kiwitrio's durable reply queue
BROADCAST_TTL_S = 66  # as kiwitrio
CONTENT_TYPE = "application/octet-stream"


async def lanes(count: int, op: Callable[[], Awaitable[Any]], concurrency: int = WINDOW,
                ) -> float:
    remaining = iter(range(count))

    async def lane() -> None:
        for _ in remaining:
            await op()

    start = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(min(concurrency, count))))
    return time.perf_counter() - start


def rpc_name(prefix: str) -> str:
    return f"{prefix}.rpc"


def spawn_workers(group: Helpers, url: str, prefix: str, rpc: bool) -> None:
    for index in range(WORKER_PROCESSES):
        extra = ["--rpc", rpc_name(prefix)] if rpc and index == 0 else []
        group.spawn(worker_argv(WORKER, "tasks", url, prefix, *extra))


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


class TaskSender:
    """Persistent, confirmed, mandatory task publishes with results routed by correlation id."""

    def __init__(self, connection: aio_pika.abc.AbstractConnection, prefix: str) -> None:
        self._connection = connection
        self._prefix = prefix
        self.pending: dict[str, asyncio.Future[bytes]] = {}

    async def open(self) -> None:
        channel = await self._connection.channel(publisher_confirms=True)
        self._exchange, self._queue = await declare_task_queue(channel, self._prefix)
        replies = await self._connection.channel()
        await replies.set_qos(prefetch_count=REPLY_PREFETCH)
        self._reply_queue = await replies.declare_queue(
            f"{self._prefix}.reply.{uuid.uuid4().hex}", durable=True,
            arguments={"x-expires": REPLY_QUEUE_EXPIRES_MS})
        self._reply_tag = await self._reply_queue.consume(self._on_reply)

    async def close(self) -> None:
        await self._reply_queue.cancel(self._reply_tag)
        await self._reply_queue.delete(if_unused=False, if_empty=False)

    async def _on_reply(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        future = self.pending.pop(message.correlation_id or "", None)
        if future is not None and not future.done():
            future.set_result(message.body)
        await message.ack()

    async def send(self, body: bytes, no_reply: bool = False) -> asyncio.Future[bytes] | None:
        if no_reply:
            await self._exchange.publish(
                aio_pika.Message(body, content_type=CONTENT_TYPE,
                                 delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=self._queue.name, mandatory=True)
            return None
        correlation_id = uuid.uuid4().hex
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.pending[correlation_id] = future
        try:
            await self._exchange.publish(
                aio_pika.Message(body, content_type=CONTENT_TYPE,
                                 delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                 correlation_id=correlation_id,
                                 reply_to=self._reply_queue.name),
                routing_key=self._queue.name, mandatory=True)
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
        self.server_version = ""
        self.leftovers: list[str] = []

    async def tasks_and_rpc(self) -> dict[str, Any]:
        prefix = f"{self.prefix}-tasks"
        self.leftovers.append(prefix)
        selected = self.config["workloads"]
        out: dict[str, Any] = {}
        with helpers() as group:
            spawn_workers(group, self.url, prefix, rpc="rpc" in selected)
            connection = await aio_pika.connect(self.url)
            async with connection:
                props = connection.transport.connection.server_properties  # type: ignore
                self.server_version = _text(props.get("version", ""))
                sender = TaskSender(connection, prefix)
                await sender.open()
                await in_thread(group.wait_for, "ready")
                if "tasks" in selected:
                    for size in self.config["task_sizes"]:
                        count = self.config["task_counts"][str(size)]
                        body = payload(size).encode()

                        async def round_trip(body: bytes = body) -> None:
                            await (await sender.send(body))  # type: ignore[misc]

                        await lanes(self.warmup, round_trip)
                        with cpu_cost(out, f"task_cpu_{size_label(size)}", count):
                            elapsed = await lanes(count, round_trip)
                        out[f"task_rate_{size_label(size)}"] = count / elapsed
                if "rpc" in selected:
                    rpc = await RPC.create(await connection.channel())
                    body = payload(DEFAULT_SIZE).encode()

                    async def call() -> None:
                        await rpc.call(rpc_name(prefix), kwargs={"msg": body})

                    await lanes(self.warmup, call, 1)
                    samples = []
                    for _ in range(self.config["rpc_latency_count"]):
                        start = time.perf_counter()
                        await call()
                        samples.append(time.perf_counter() - start)
                    summary = latency_summary(samples)
                    count = self.config["rpc_concurrent_count"]
                    elapsed = await lanes(count, call, RPC_CONCURRENCY)
                    out.update({"rpc_median_ms": summary["median_ms"],
                                "rpc_p99_ms": summary["p99_ms"],
                                "rpc_concurrent_rate": count / elapsed})
                    await rpc.close()
                await sender.close()
            await in_thread(group.stop)
        return out

    async def publish_consume(self) -> dict[str, Any]:
        prefix = f"{self.prefix}-pub"
        self.leftovers.append(prefix)
        count = self.config["publish_count"]
        body = payload(DEFAULT_SIZE).encode()
        out: dict[str, Any] = {}
        connection = await aio_pika.connect(self.url)
        async with connection:
            sender = TaskSender(connection, prefix)
            await sender.open()

            async def publish() -> None:
                await sender.send(body, no_reply=True)

            await lanes(self.warmup, publish)
            with cpu_cost(out, "publish_cpu", count):
                out["publish_rate"] = count / await lanes(count, publish)
            if "consume" in self.config["workloads"]:
                total = count + self.warmup
                seen = 0
                all_seen = asyncio.Event()
                channel = await connection.channel()
                await channel.set_qos(prefetch_count=PREFETCH)

                async def consume(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                    nonlocal seen
                    seen += 1
                    if seen == total:
                        all_seen.set()
                    await message.ack()

                with cpu_cost(out, "consume_cpu", total):
                    start = time.perf_counter()
                    queue = await channel.get_queue(f"{prefix}.q", ensure=False)
                    tag = await queue.consume(consume)
                    await asyncio.wait_for(all_seen.wait(), 120)
                    out["consume_rate"] = total / (time.perf_counter() - start)
                await queue.cancel(tag)
            await sender.close()
        return out

    async def broadcasts(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        body = payload(DEFAULT_SIZE).encode()
        for listeners, count in self.config["broadcast"]:
            prefix = f"{self.prefix}-bc{listeners}"
            self.leftovers.append(prefix)
            with helpers() as group:
                spawn_listeners(group, WORKER, self.url, prefix, listeners, count, [])
                connection = await aio_pika.connect(self.url)
                async with connection:
                    channel = await connection.channel(publisher_confirms=True)
                    exchange = await channel.declare_exchange(
                        broadcast_exchange(prefix), aio_pika.ExchangeType.TOPIC, durable=True)
                    await in_thread(group.wait_for, "ready")

                    async def send(subject: str = SUBJECT,
                                   exchange: aio_pika.abc.AbstractExchange = exchange) -> None:
                        await exchange.publish(
                            aio_pika.Message(body, content_type=CONTENT_TYPE,
                                             headers={"sender": SENDER, "subject": subject},
                                             expiration=BROADCAST_TTL_S),
                            routing_key=subject, mandatory=False)

                    for _ in range(self.warmup):
                        await send("warmup.x")
                    start = time.monotonic()
                    await lanes(count, send)
                    done = await in_thread(functools.partial(
                        group.wait_for, "done", timeout=broadcast_timeout(listeners, count)))
                await in_thread(group.stop)
            end = max(float(line.split()[1]) for line in done)
            out[f"broadcast_rate_{listeners}"] = listeners * count / (end - start)
        return out

    async def inflight(self) -> dict[str, Any]:
        prefix = f"{self.prefix}-inflight"
        self.leftovers.append(prefix)
        count = self.config["inflight_count"]
        body = payload(DEFAULT_SIZE).encode()
        connection = await aio_pika.connect(self.url)
        async with connection:
            sender = TaskSender(connection, prefix)
            await sender.open()
            await sender.send(body, no_reply=True)
            probe = MemoryProbe()
            futures: list[asyncio.Future[bytes]] = []

            async def send() -> None:
                futures.append(await sender.send(body))  # type: ignore[arg-type]

            send_s = await lanes(count, send)
            held = probe.now()
            with helpers() as group:
                start = time.perf_counter()
                spawn_workers(group, self.url, prefix, rpc=False)
                await asyncio.wait_for(asyncio.gather(*futures), 600)
                drain_s = time.perf_counter() - start
                await in_thread(group.stop)
            futures.clear()
            await sender.close()
            after = probe.now()
            probe.stop()
        return inflight_metrics(count, held, after, send_s, drain_s)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def main() -> None:
    args = client_parser(__doc__.splitlines()[0]).parse_args()
    config = json.loads(args.config)
    client = Client(config)
    groups = [
        ("tasks+rpc", ["tasks", "rpc"], lambda: asyncio.run(client.tasks_and_rpc())),
        ("publish+consume", ["publish", "consume"],
         lambda: asyncio.run(client.publish_consume())),
        ("broadcast", ["broadcast"], lambda: asyncio.run(client.broadcasts())),
        ("inflight", ["inflight"], lambda: asyncio.run(client.inflight())),
    ]
    try:
        metrics, errors = run_workloads(config, groups)
    finally:
        clean_up(config["url"], client.leftovers)
    emit_result(IMPL, metrics, errors, {
        "python": platform.python_version(), "aio-pika": aio_pika.__version__,
        "rabbitmq": client.server_version,
    })


if __name__ == "__main__":
    main()
