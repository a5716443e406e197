"""Benchmark helper process for kiwiPy 0.9 (its RmqThreadCommunicator). Runs in the kiwiPy
environment (aio-pika 9.5), not in kiwitrio's.

    python benchmarks/worker_kiwipy.py tasks --prefix P [--rpc ID]
    python benchmarks/worker_kiwipy.py listen --prefix P --listeners 5 --expect 300

``tasks``: one thread communicator whose task subscriber returns the task (and, with
``--rpc``, an RPC subscriber returning the message). ``listen``: ``--listeners`` thread
communicators, each with a filtered broadcast subscriber that counts. kiwiPy's defaults
(YAML encoding, ``connect_robust``); ``testing_mode`` is left off because it turns on asyncio
debug mode, which would slow kiwiPy down.
"""

from __future__ import annotations

import os
import sys
from contextlib import ExitStack
from typing import Any

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import kiwipy
from kiwipy.rmq import RmqThreadCommunicator

from benchmarks._common import (
    SENDER_FILTER,
    SUBJECT_FILTER,
    ListenerCounts,
    announce,
    kiwi_names,
    wait_for_stop_line,
    worker_parser,
)

#: kiwiPy waits this long for its loop thread in blocking calls (default 5 s, too short
#: when a benchmark saturates the loop).
LOOP_TIMEOUT = 120.0


def connect(url: str, prefix: str, **options: Any) -> RmqThreadCommunicator:
    return RmqThreadCommunicator.connect(
        connection_params={"url": url}, **kiwi_names(prefix),
        async_task_timeout=LOOP_TIMEOUT, **options)


def echo(_comm: Any, msg: Any) -> Any:
    return msg


def tasks(args: Any) -> None:
    comm = connect(args.url, args.prefix, task_prefetch_count=args.prefetch)
    try:
        comm.add_task_subscriber(echo)
        if args.rpc:
            comm.add_rpc_subscriber(echo, args.rpc)
        announce("ready")
        wait_for_stop_line()
    finally:
        comm.close()
    announce("count", 0)


def listen(args: Any) -> None:
    counts = ListenerCounts(args.listeners, args.expect)
    with ExitStack() as stack:
        for index in range(args.listeners):
            comm = connect(args.url, args.prefix)
            stack.callback(comm.close)

            def on_broadcast(_comm: Any, _body: Any, _sender: Any, _subject: Any,
                             _correlation_id: Any, index: int = index) -> None:
                counts.hit(index)

            comm.add_broadcast_subscriber(kiwipy.BroadcastFilter(
                on_broadcast, subject=SUBJECT_FILTER, sender=SENDER_FILTER))
        announce("ready")
        wait_for_stop_line()
    announce("count", counts.total())


def main() -> None:
    args = worker_parser(__doc__.splitlines()[0]).parse_args()
    (tasks if args.role == "tasks" else listen)(args)


if __name__ == "__main__":
    main()
