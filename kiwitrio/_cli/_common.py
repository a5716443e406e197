"""What the commands share: exit codes, the one-line error, argument types, output helpers,
and opening the communicator the global options describe."""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import kiwitrio

from .._saferepr import safe_repr
from .._urls import redact_url

__all__ = [
    "EXIT_CONNECTION_FAILED",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_UNROUTABLE",
    "EXIT_USAGE",
    "MAX_SUBJECT_BYTES",
    "CliError",
    "Command",
    "communicator",
    "eprint",
    "non_negative_seconds_arg",
    "parse_value",
    "plural",
    "port_arg",
    "positive_int_arg",
    "redact",
    "seconds_arg",
    "subject_arg",
    "to_json",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNROUTABLE = 3
EXIT_CONNECTION_FAILED = 4
EXIT_TIMEOUT = 5
EXIT_INTERRUPTED = 130

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

#: ``url`` without its password (the core's helper).
redact = redact_url


class CliError(Exception):
    """A user-facing error: printed as one line, exits with ``code``."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code



# -- argument types -----------------------------------------------------------------------------


N = TypeVar("N", int, float)


def _number_arg(convert: Callable[[str], N], what: str, accept: Callable[[N], bool],
                requirement: str) -> Callable[[str], N]:
    """An argparse ``type``: ``convert(text)``, refused unless ``accept`` takes it."""
    def parse(text: str) -> N:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"{requirement}, not {text}")
        return value

    return parse


positive_int_arg = _number_arg(int, "an integer", lambda value: value >= 1,
                               "must be at least 1")
port_arg = _number_arg(int, "a port number", lambda value: 0 <= value <= 65535,
                       "must be a port number from 0 to 65535")
seconds_arg = _number_arg(float, "a number of seconds",
                          lambda value: value > 0 and not math.isinf(value),
                          "must be a positive number of seconds")
non_negative_seconds_arg = _number_arg(float, "a number of seconds",
                                       lambda value: value >= 0 and not math.isinf(value),
                                       "must be 0 or more seconds")


#: AMQP's limit on a routing key, hence on a broadcast subject and a subject pattern.
MAX_SUBJECT_BYTES = 255


def subject_arg(text: str) -> str:
    size = len(text.encode())
    if size > MAX_SUBJECT_BYTES:
        raise argparse.ArgumentTypeError(
            f"at most {MAX_SUBJECT_BYTES} bytes (AMQP's limit on routing keys), not {size}")
    return text



# -- output ------------------------------------------------------------------------------------


def eprint(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def parse_value(text: str, as_json: bool, what: str) -> Any:
    if not as_json:
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{what} is not valid JSON ({exc.msg}, column {exc.colno}): "
                       f"{text[:80]!r}", EXIT_USAGE) from exc


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, (set, frozenset)):
        return list(value)
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    return repr(value)


def to_json(value: Any) -> str:
    """One line of JSON for anything CBOR can carry (bytes as text, other oddities as repr)."""
    try:
        return json.dumps(value, default=_json_default, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):  # keys that are not str/int/float...
        # ...or a value whose repr() raises itself (an int too long to print): described.
        return json.dumps(safe_repr(value, 10_000), ensure_ascii=False)


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"




def communicator(args: argparse.Namespace, **overrides: Any
                 ) -> AbstractAsyncContextManager[kiwitrio.Communicator]:
    options: dict[str, Any] = {
        "message_exchange": args.message_exchange,
        "task_exchange": args.task_exchange,
        "task_queue": args.task_queue,
        "testing_mode": args.testing,
    }
    connect_timeout = args.connect_timeout
    if connect_timeout is None and args.command in ONE_SHOT_COMMANDS:
        connect_timeout = ONE_SHOT_CONNECT_TIMEOUT
    if connect_timeout is not None:
        options["reconnect"] = kiwitrio.ReconnectPolicy(startup_give_up_after=connect_timeout)
    options.update(overrides)
    return kiwitrio.open_communicator(args.url, **options)


