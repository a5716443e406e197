"""``kiwitrio inspect`` and ``kiwitrio control ping``: see and steer the live communicators."""

from __future__ import annotations

import argparse
import json

import trio

import kiwitrio

from ._args import seconds_arg
from ._common import ONE_SHOT_CONNECT_TIMEOUT, CliError, Command, ExitCode, communicator
from ._output import eprint, to_json

__all__ = ["COMMANDS", "add_commands", "run"]

COMMANDS = ("inspect", "control")
#: How long answers are collected by default (s): a communicator busy in a thread may need a
#: moment, and an inspect that always takes a second is cheap.
DEFAULT_COLLECT = 1.5


def add_commands(command: Command) -> None:
    inspect = command(
        "inspect", "show every live communicator: RPC subscribers, task queues, tasks held",
        "Ask every live kiwitrio communicator on the broker (those sharing the message "
        "exchange) what it is doing, and print one entry per communicator that answered "
        "within --timeout: host, pid, its RPC subscribers' identifiers, the task queues it "
        "consumes and the tasks it holds (queue, task id, age, whether on a lease).",
    )
    _collect_options(inspect)
    inspect.add_argument("--json", action="store_true",
                         help="print a JSON array of objects (keys identity, host, pid, "
                              "rpc_subscribers, task_queues, in_flight)")
    control = command("control", "ping the live communicators, or stop kiwitrio workers",
                      "ping: print the identity (host:pid:random) of each live communicator "
                      "that answered within --timeout, one per line. shutdown: ask kiwitrio "
                      "workers to stop as SIGTERM does (their unfinished tasks go back to the "
                      "queue); other communicators answer that they ignore it. Exit code 3 if "
                      "nobody answered.")
    control.add_argument("action", choices=["ping", "shutdown"], help="what to ask")
    control.add_argument("--id", metavar="PID-or-IDENTITY",
                         help="only the communicators with this pid or identity (default: all)")
    _collect_options(control)


def _collect_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=seconds_arg, default=DEFAULT_COLLECT, metavar="S",
                        help=f"collect answers for S seconds (default {DEFAULT_COLLECT:g})")


def run(args: argparse.Namespace) -> int:
    return trio.run(_run, args)


async def _run(args: argparse.Namespace) -> int:
    connect_timeout = args.connect_timeout
    if connect_timeout is None:
        connect_timeout = ONE_SHOT_CONNECT_TIMEOUT
    policy = kiwitrio.ReconnectPolicy(startup_give_up_after=connect_timeout)
    async with communicator(args, reconnect=policy) as comm:
        if args.command == "inspect":
            infos = await comm.inspect(timeout=args.timeout)
        elif args.action == "shutdown":
            accepted = await comm.control_shutdown(args.id, timeout=args.timeout)
        else:
            identities = await comm.ping(timeout=args.timeout)
    if args.command == "inspect":
        print(format_infos(infos, as_json=args.json), flush=True)
        if not infos and not args.json:
            eprint(f"kiwitrio: no communicator answered within {args.timeout:g} s")
        return ExitCode.OK
    if args.action == "shutdown":
        return _report_shutdown(args, accepted)
    chosen = [identity for identity in identities if _chosen(identity, args.id)]
    for identity in chosen:
        print(identity, flush=True)
    if not chosen:
        raise CliError(f"no communicator answered within {args.timeout:g} s"
                            + (f" with id {args.id!r}" if args.id else ""),
                            ExitCode.UNROUTABLE)
    return ExitCode.OK


def _report_shutdown(args: argparse.Namespace, accepted: dict[str, bool]) -> int:
    for identity, stopping in sorted(accepted.items()):
        print(f"{identity}: {'stopping' if stopping else 'ignored (not a kiwitrio worker)'}",
              flush=True)
    if not accepted:
        raise CliError(f"no communicator answered within {args.timeout:g} s"
                            + (f" with id {args.id!r}" if args.id else ""),
                            ExitCode.UNROUTABLE)
    return ExitCode.OK


def _chosen(identity: str, wanted: str | None) -> bool:
    """Whether ``identity`` (``host:pid:random``) is the one ``--id`` names (all if none)."""
    if wanted is None:
        return True
    parts = identity.split(":")
    return identity == wanted or (len(parts) == 3 and parts[1] == wanted)


def format_infos(infos: list[kiwitrio.CommunicatorInfo], *, as_json: bool) -> str:
    if as_json:
        return json.dumps([info.as_dict() for info in infos], indent=2)
    return "\n".join(_format_info(info) for info in infos)


def _format_info(info: kiwitrio.CommunicatorInfo) -> str:
    def listing(values: tuple[str, ...]) -> str:
        return ", ".join(map(to_json, values)) if values else "-"

    lines = [f"{info.host} pid {info.pid} ({info.identity})",
             f"  rpc subscribers: {listing(info.rpc_subscribers)}",
             f"  task queues: {listing(info.task_queues)}",
             f"  in flight: {len(info.in_flight)}"]
    lines += [f"    {to_json(task.queue)} {task.task_id} {task.age:.1f} s"
              + (" (on a lease)" if task.leased else "") for task in info.in_flight]
    return "\n".join(lines)
