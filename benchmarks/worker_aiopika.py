"""Benchmark helper process for the plain asyncio aio-pika reference.

    python benchmarks/worker_aiopika.py tasks --prefix P [--rpc NAME]
    python benchmarks/worker_aiopika.py listen --prefix P --listeners 5 --expect 300

``tasks``: consumes the durable task queue with manual acks (prefetch ``--prefetch``), replies
to ``reply_to`` with the same body and the ``correlation_id``, persistent, through the default
exchange on a channel with publisher confirms (``mandatory``), then acks: the work kiwitrio
does for a task. With ``--rpc``, also serves ``aio_pika.patterns.RPC`` method NAME (echo).
``listen``: ``--listeners`` connections, each with an exclusive queue bound to the topic
exchange, consuming with manual acks and applying the same subject/sender filters as
kiwitrio's BroadcastFilter in Python.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from typing import Any

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import aio_pika
from aio_pika.patterns import RPC

from benchmarks._common import (
    SENDER_FILTER,
    SUBJECT_FILTER,
    ListenerCounts,
    announce,
    wait_for_stop_line,
    worker_parser,
)

BROADCAST_PREFETCH = 64  # as kiwitrio


def task_names(prefix: str) -> tuple[str, str]:
    """(task exchange, task queue) of the aio-pika reference."""
    return f"{prefix}.t", f"{prefix}.q"


def broadcast_exchange(prefix: str) -> str:
    return f"{prefix}.m"


async def declare_task_queue(channel: aio_pika.abc.AbstractChannel, prefix: str,
                             ) -> tuple[aio_pika.abc.AbstractExchange, aio_pika.abc.AbstractQueue]:
    exchange_name, queue_name = task_names(prefix)
    exchange = await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.DIRECT,
                                              durable=True)
    queue = await channel.declare_queue(queue_name, durable=True)
    await queue.bind(exchange, routing_key=queue_name)
    return exchange, queue


def wildcard(pattern: str) -> re.Pattern[str]:
    """kiwitrio's (and kiwiPy's) ``*`` wildcard filter as a regex."""
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


async def echo(*, msg: Any) -> Any:
    return msg


async def stop_line() -> None:
    await asyncio.get_running_loop().run_in_executor(None, wait_for_stop_line)


async def tasks(args: Any) -> None:
    connection = await aio_pika.connect(args.url)
    async with connection:
        replies = await connection.channel(publisher_confirms=True)
        consuming = await connection.channel()
        await consuming.set_qos(prefetch_count=args.prefetch)
        _exchange, queue = await declare_task_queue(consuming, args.prefix)

        async def on_task(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            if message.reply_to:
                await replies.default_exchange.publish(
                    aio_pika.Message(message.body, content_type=message.content_type,
                                     correlation_id=message.correlation_id,
                                     delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key=message.reply_to, mandatory=True)
            await message.ack()

        await queue.consume(on_task)
        if args.rpc:
            rpc_channel = await connection.channel()
            rpc = await RPC.create(rpc_channel)
            await rpc.register(args.rpc, echo, auto_delete=True)
        announce("ready")
        await stop_line()
    announce("count", 0)


async def listen(args: Any) -> None:
    counts = ListenerCounts(args.listeners, args.expect)
    subject_filter, sender_filter = wildcard(SUBJECT_FILTER), wildcard(SENDER_FILTER)
    connections = []
    try:
        for index in range(args.listeners):
            connection = await aio_pika.connect(args.url)
            connections.append(connection)
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=BROADCAST_PREFETCH)
            exchange = await channel.declare_exchange(
                broadcast_exchange(args.prefix), aio_pika.ExchangeType.TOPIC, durable=True)
            queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            await queue.bind(exchange, routing_key="bench.#")

            async def on_broadcast(message: aio_pika.abc.AbstractIncomingMessage,
                                   index: int = index) -> None:
                headers = message.headers
                subject, sender = headers.get("subject"), headers.get("sender")
                if (not isinstance(subject, str) or subject_filter.fullmatch(subject)) and (
                        not isinstance(sender, str) or sender_filter.fullmatch(sender)):
                    counts.hit(index)
                await message.ack()

            await queue.consume(on_broadcast)
        announce("ready")
        await stop_line()
    finally:
        for connection in connections:
            await connection.close()
    announce("count", counts.total())


def main() -> None:
    args = worker_parser(__doc__.splitlines()[0]).parse_args()
    asyncio.run(tasks(args) if args.role == "tasks" else listen(args))


if __name__ == "__main__":
    main()
