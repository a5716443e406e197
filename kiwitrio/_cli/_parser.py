"""The argument parser: the global options, each command module's subcommands, the checks
argparse cannot make."""

from __future__ import annotations

import argparse
import os
import textwrap
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import kiwitrio

from .._communicator import DEFAULT_MESSAGE_EXCHANGE, DEFAULT_TASK_EXCHANGE, DEFAULT_TASK_QUEUE
from .._urls import check_broker_scheme
from . import _inspect, _messages, _queues, _scripts, _worker
from ._args import non_negative_int_arg, non_negative_seconds_arg
from ._common import ONE_SHOT_CONNECT_TIMEOUT, PROG, URL_ENV

__all__ = ["COMMAND_MODULES", "build_parser", "parse_args"]

#: Where each command lives, in the order ``--help`` lists them. Each module has
#: ``COMMANDS``, ``add_commands(command)`` and ``run(args) -> exit code``.
COMMAND_MODULES: tuple[ModuleType, ...] = (_worker, _messages, _queues, _inspect, _scripts)

EPILOG = """\
exit codes:
  0    success (worker and listen stopped by SIGINT/SIGTERM also exit 0)
  1    a task or RPC failed remotely, the broker refused the login or the vhost, or
       another kiwitrio error
  2    usage error: bad arguments (a URL that cannot be parsed, a subject over 255
       bytes), bad JSON, MODULE:FUNCTION not importable
  3    unroutable: no RPC subscriber with that identifier, or no such task queue
  4    the broker cannot be reached
  5    timeout (--timeout expired)
  130  interrupted (Ctrl-C)

examples:
  kiwitrio worker mytasks:square --concurrency 4
  kiwitrio send --json --wait 1 2 3
  seq 100 | kiwitrio send --json --wait
  kiwitrio rpc process-42 status
  kiwitrio listen --subject 'state_changed.*' --count 10
"""



def _global_options() -> argparse.ArgumentParser:
    """Options accepted before and after the command (``default=SUPPRESS``, see _defaults)."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection and logging")
    group.add_argument("--url", default=argparse.SUPPRESS,
                       help=f"broker URL: amqp://, amqps://, memory:// or "
                            f"sqlite:///abs/path.db (default: ${URL_ENV}, "
                            f"else {kiwitrio.DEFAULT_URL})")
    group.add_argument("--message-exchange", default=argparse.SUPPRESS, metavar="NAME",
                       help=f"exchange for RPC and broadcasts (default {DEFAULT_MESSAGE_EXCHANGE})")
    group.add_argument("--task-exchange", default=argparse.SUPPRESS, metavar="NAME",
                       help=f"exchange for tasks (default {DEFAULT_TASK_EXCHANGE})")
    group.add_argument("--task-queue", default=argparse.SUPPRESS, metavar="NAME",
                       help=f"the default task queue (default {DEFAULT_TASK_QUEUE})")
    group.add_argument("--connect-timeout", type=non_negative_seconds_arg, metavar="S",
                       default=argparse.SUPPRESS,
                       help="keep trying to reach the broker for S seconds at start, 0: try "
                            f"once (default: {ONE_SHOT_CONNECT_TIMEOUT:g} for send, rpc and "
                            "broadcast; kiwitrio's default reconnection policy for worker and "
                            "listen); then exit with code 4")
    group.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                       help="log more (-v: kiwitrio info, -vv: debug, -vvv: everything) and "
                            "show tracebacks on errors")
    group.add_argument("--queue-type", choices=["classic", "quorum"], default=argparse.SUPPRESS,
                       help="declare the durable queues (task, dead-letter, lease and reply "
                            "queues) as this type (queue_type; default: none given, the "
                            "broker's default, classic). Every side must agree")
    group.add_argument("--delivery-limit", type=non_negative_int_arg, metavar="N",
                       default=argparse.SUPPRESS,
                       help="with --queue-type quorum: a task is redelivered at most N times, "
                            "then dead-lettered (delivery_limit; default 20). Every side must "
                            "agree")
    group.add_argument("--testing", action="store_true", default=argparse.SUPPRESS,
                       help="testing mode (testing_mode=True): auto-delete exchanges and "
                            "expiring queues, so that tests and demos leave nothing behind. "
                            "Every side must agree: a queue or exchange declared with it "
                            "cannot be declared without it (and the other way round)")
    return common


def _defaults() -> dict[str, Any]:
    return {
        "url": os.environ.get(URL_ENV) or kiwitrio.DEFAULT_URL,
        "message_exchange": DEFAULT_MESSAGE_EXCHANGE,
        "task_exchange": DEFAULT_TASK_EXCHANGE,
        "task_queue": DEFAULT_TASK_QUEUE,
        "connect_timeout": None,
        "verbose": 0,
        "testing": False,
        "queue_type": None,
        "delivery_limit": None,
    }




def build_parser() -> argparse.ArgumentParser:
    common = _global_options()
    parser = argparse.ArgumentParser(
        prog=PROG, parents=[common], epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Tasks, RPC and broadcasts over RabbitMQ from the command line "
                    f"(kiwitrio {kiwitrio.__version__}).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {kiwitrio.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, parents=[common], help=help,
            description=textwrap.fill(description or help, width=88),
            epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    for module in COMMAND_MODULES:
        module.add_commands(command)
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in _scripts.COMMANDS:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    _messages.check_args(parser, args)
    for name, value in _defaults().items():
        if not hasattr(args, name):
            setattr(args, name, value)
    try:
        check_broker_scheme(args.url)
    except ValueError as exc:
        parser.error(str(exc))
    return args
