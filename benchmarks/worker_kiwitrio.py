"""Benchmark helper process for kiwitrio: a task worker or broadcast listeners.

    python benchmarks/worker_kiwitrio.py tasks --prefix P [--rpc ID] [--api sync]
    python benchmarks/worker_kiwitrio.py listen --prefix P --listeners 5 --expect 300

``tasks``: one communicator whose task subscriber returns the task it got (and, with
``--rpc``, an RPC subscriber that returns the message). ``listen``: ``--listeners``
communicators, each with one filtered broadcast subscriber that counts. ``--api sync`` does
the same with kiwitrio_sync and plain-function subscribers. The protocol with the client is
in ``_common.py``.
"""

from __future__ import annotations

import os
import sys
from contextlib import AsyncExitStack, ExitStack
from typing import Any

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import trio

import kiwitrio
from benchmarks._common import (
    SENDER_FILTER,
    SUBJECT_FILTER,
    ListenerCounts,
    announce,
    kiwi_names,
    wait_for_stop_line,
    worker_parser,
)


async def echo(_comm: Any, msg: Any) -> Any:
    return msg


def echo_sync(_comm: Any, msg: Any) -> Any:
    return msg


def options(args: Any, **extra: Any) -> dict[str, Any]:
    return {**kiwi_names(args.prefix), "testing_mode": True, **extra}


async def async_tasks(args: Any) -> None:
    async with kiwitrio.open_communicator(
        args.url, **options(args, task_prefetch_count=args.prefetch)
    ) as comm:
        await comm.add_task_subscriber(echo)
        if args.rpc:
            await comm.add_rpc_subscriber(echo, args.rpc)
        announce("ready")
        await trio.to_thread.run_sync(wait_for_stop_line, abandon_on_cancel=True)
    announce("count", 0)


async def async_listen(args: Any) -> None:
    counts = ListenerCounts(args.listeners, args.expect)
    async with AsyncExitStack() as stack:
        for index in range(args.listeners):
            comm = await stack.enter_async_context(
                kiwitrio.open_communicator(args.url, **options(args)))

            async def on_broadcast(_comm: Any, _body: Any, _sender: Any, _subject: Any,
                                   _correlation_id: Any, index: int = index) -> None:
                counts.hit(index)

            await comm.add_broadcast_subscriber(kiwitrio.BroadcastFilter(
                on_broadcast, subject=SUBJECT_FILTER, sender=SENDER_FILTER))
        announce("ready")
        await trio.to_thread.run_sync(wait_for_stop_line, abandon_on_cancel=True)
    announce("count", counts.total())


def sync_tasks(args: Any) -> None:
    import kiwitrio_sync

    with kiwitrio_sync.connect(args.url, **options(args, task_prefetch_count=args.prefetch),
                               ) as comm:
        comm.add_task_subscriber(echo_sync)
        if args.rpc:
            comm.add_rpc_subscriber(echo_sync, args.rpc)
        announce("ready")
        wait_for_stop_line()
    announce("count", 0)


def sync_listen(args: Any) -> None:
    import kiwitrio_sync

    counts = ListenerCounts(args.listeners, args.expect)
    with ExitStack() as stack:
        for index in range(args.listeners):
            comm = stack.enter_context(kiwitrio_sync.connect(args.url, **options(args)))

            def on_broadcast(_comm: Any, _body: Any, _sender: Any, _subject: Any,
                             _correlation_id: Any, index: int = index) -> None:
                counts.hit(index)

            comm.add_broadcast_subscriber(kiwitrio.BroadcastFilter(
                on_broadcast, subject=SUBJECT_FILTER, sender=SENDER_FILTER))
        announce("ready")
        wait_for_stop_line()
    announce("count", counts.total())


def main() -> None:
    parser = worker_parser(__doc__.splitlines()[0])
    parser.add_argument("--api", choices=["async", "sync"], default="async")
    args = parser.parse_args()
    if args.api == "async":
        trio.run(async_tasks if args.role == "tasks" else async_listen, args)
    else:
        (sync_tasks if args.role == "tasks" else sync_listen)(args)


if __name__ == "__main__":
    main()
