"""``kiwitrio status``, ``purge`` and ``delete``: the task queues, their depths, cleaning up.

These commands open a bare connection and declare nothing, so looking at or
removing a queue never creates one (a communicator would declare its default task queue).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import Any

import trio

import kiwitrio

from .._backends import Session, open_session
from .._kinds import _admin
from ._common import Command, ExitCode
from ._output import plural, redact

__all__ = ["COMMANDS", "add_commands", "run"]

COMMANDS = ("status", "purge", "delete")


def add_commands(command: Command) -> None:
    status = command(
        "status", "check the connection; show the broker and every task queue",
        "Connect once and print the broker's version and every task queue of the task "
        "exchange (those kiwitrio created, and --task-queue), with how many tasks wait, how "
        "many consumers it has, and how many messages its dead-letter queue holds. "
        "Declares nothing.",
    )
    status.add_argument("--json", action="store_true",
                        help="print a JSON array of objects (keys queue, exists, waiting, "
                             "consumers, dead_letter_queue, dead_letters)")
    purge = command(
        "purge", "remove the waiting messages of queues",
        "Remove the messages waiting in each QUEUE (tasks being worked on stay with their "
        "workers) and print how many went. A queue with consumers is left alone unless "
        "--force: exit code 1.",
    )
    purge.add_argument("queues", nargs="+", metavar="QUEUE")
    _force_option(purge)
    delete = command(
        "delete", "delete task queues (with their dead-letter queues) or exchanges",
        "Delete each QUEUE and, for a task queue, its dead-letter queue QUEUE.dead-letter, "
        "with the messages they hold; with --exchange, delete exchanges instead. A queue "
        "with consumers, or an exchange with queues bound to it, is left alone unless "
        "--force: exit code 1.",
    )
    delete.add_argument("names", nargs="+", metavar="QUEUE")
    delete.add_argument("--exchange", action="store_true",
                        help="the names are exchanges, not queues")
    _force_option(delete)


def _force_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true",
                        help="also when in use (consumers lose their queue: workers still "
                             "attached stop receiving tasks from it)")


def run(args: argparse.Namespace) -> int:
    return trio.run(_run, args)


async def _run(args: argparse.Namespace) -> int:
    async with open_session(args.url, heartbeat=0) as session:
        if args.command == "status":
            return await _status(args, session)
        if args.command == "purge":
            for queue in args.queues:
                count = await _admin.purge_queue(session, queue, force=args.force)
                print(f"{queue}: {plural(count, 'message')} removed", flush=True)
            return ExitCode.OK
        for name in args.names:
            await _delete(args, session, name)
    return ExitCode.OK


async def _delete(args: argparse.Namespace, session: Session, name: str) -> None:
    if args.exchange:
        await _admin.delete_exchange(session, name, force=args.force)
        print(f"exchange {name}: deleted", flush=True)
        return
    deleted = await _admin.delete_queue(session, args.task_exchange, name, force=args.force)
    if not deleted:
        print(f"{name}: does not exist", flush=True)
    for queue, count in deleted.items():
        print(f"{queue}: deleted ({plural(count, 'message')})", flush=True)


async def _status(args: argparse.Namespace, session: Session) -> int:
    statuses = await _admin.task_queue_status(session, args.task_exchange,
                                              also=[args.task_queue])
    if args.json:
        print(json.dumps([status.as_dict() for status in statuses], indent=2), flush=True)
        return ExitCode.OK
    print(f"kiwitrio {kiwitrio.__version__}")
    print(f"broker: {redact(args.url)} (connected)")
    print(_server_line(session.server_properties))
    print(f"message exchange: {args.message_exchange}")
    print(f"task exchange: {args.task_exchange}")
    print(f"task queues ({len(statuses)}):")
    for status in statuses:
        print(f"  {format_status(status)}")
    return ExitCode.OK


def _server_line(props: Mapping[str, Any]) -> str:
    return (f"server: {props.get('product', '?')} {props.get('version', '?')}"
            + (f" on {props['platform']}" if props.get("platform") else ""))


def format_status(status: kiwitrio.QueueStatus) -> str:
    """``name: 3 waiting, 1 consumer, 0 dead letters`` (or ``name: does not exist``)."""
    dead = plural(status.dead_letters, "dead letter")
    if not status.exists:
        return f"{status.name}: does not exist" + (f" ({dead})" if status.dead_letters else "")
    return (f"{status.name}: {status.waiting} waiting, "
            f"{plural(status.consumers, 'consumer')}, {dead}")
