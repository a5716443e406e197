"""Reading the command line: argparse types with one-line refusals, and values given as
text or JSON."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from typing import Any, TypeVar

from ._common import CliError, ExitCode

__all__ = [
    "MAX_SUBJECT_BYTES",
    "non_negative_int_arg",
    "non_negative_seconds_arg",
    "parse_value",
    "port_arg",
    "positive_int_arg",
    "seconds_arg",
    "subject_arg",
]


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
non_negative_int_arg = _number_arg(int, "an integer", lambda value: value >= 0,
                                   "must be 0 or more")
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


def parse_value(text: str, as_json: bool, what: str) -> Any:
    if not as_json:
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{what} is not valid JSON ({exc.msg}, column {exc.colno}): "
                       f"{text[:80]!r}", ExitCode.USAGE) from exc
