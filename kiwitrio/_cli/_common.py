"""What every command shares: the exit codes, the one-line error, the global options'
constants, and opening the communicator those options describe.

Reading arguments is :mod:`._args`'s job, writing output :mod:`._output`'s."""

from __future__ import annotations

import argparse
import enum
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import kiwitrio

__all__ = [
    "ONE_SHOT_COMMANDS",
    "ONE_SHOT_CONNECT_TIMEOUT",
    "PROG",
    "URL_ENV",
    "CliError",
    "Command",
    "ExitCode",
    "communicator",
    "logger",
]


class ExitCode(enum.IntEnum):
    """The command's exit status (the table in :mod:`kiwitrio._cli`)."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    UNROUTABLE = 3
    CONNECTION_FAILED = 4
    TIMEOUT = 5
    INTERRUPTED = 130


PROG = "kiwitrio"
URL_ENV = "KIWITRIO_URL"
#: How long send, rpc and broadcast try to reach the broker (worker and listen: the default
#: reconnection policy of open_communicator).
ONE_SHOT_CONNECT_TIMEOUT = 3.0
ONE_SHOT_COMMANDS = ("send", "rpc", "broadcast")

logger = logging.getLogger("kiwitrio.cli")  # a public name (docs/configuration.md#logging)

#: ``command(name, help, description=None)``: adds a subcommand with the global options
#: (kiwitrio._cli._parser makes it; each command module's ``add_commands`` takes it).
Command = Callable[..., argparse.ArgumentParser]


class CliError(Exception):
    """A user-facing error: printed as one line, exits with ``code``."""

    def __init__(self, message: str, code: int = ExitCode.FAILURE) -> None:
        super().__init__(message)
        self.code = code


def communicator(args: argparse.Namespace, **overrides: Any
                 ) -> AbstractAsyncContextManager[kiwitrio.Communicator]:
    options: dict[str, Any] = {
        "message_exchange": args.message_exchange,
        "task_exchange": args.task_exchange,
        "task_queue": args.task_queue,
        "testing_mode": args.testing,
        "queue_type": args.queue_type,
        "delivery_limit": args.delivery_limit,
    }
    connect_timeout = args.connect_timeout
    if connect_timeout is None and args.command in ONE_SHOT_COMMANDS:
        connect_timeout = ONE_SHOT_CONNECT_TIMEOUT
    if connect_timeout is not None:
        options["reconnect"] = kiwitrio.ReconnectPolicy(startup_give_up_after=connect_timeout)
    options.update(overrides)
    return kiwitrio.open_communicator(args.url, **options)


