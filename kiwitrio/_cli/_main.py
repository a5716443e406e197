"""``main``: parse, configure logging, run the command, turn what ended it into an exit code
and one line on stderr."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Sequence

import trio

import kiwitrio

from .._groups import leaves_of
from . import _worker
from ._common import ONE_SHOT_COMMANDS, PROG, CliError, ExitCode
from ._output import eprint
from ._parser import COMMAND_MODULES, parse_args

__all__ = ["main"]


def _configure_logging(verbose: int, command: str) -> None:
    if verbose >= 3:
        level, ours = logging.DEBUG, logging.DEBUG
    else:
        level, ours = logging.WARNING, {0: logging.WARNING, 1: logging.INFO}.get(verbose,
                                                                                   logging.DEBUG)
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s" if verbose
                        else "kiwitrio: %(levelname)s: %(name)s: %(message)s")
    logging.getLogger("kiwitrio").setLevel(ours)
    if command in _worker.COMMANDS:
        _worker.configure_logging()
    if not verbose:
        # Their errors are kiwitrio's errors too, and reported as such: not twice.
        for name in ("aiormq", "aio_pika"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        if command in ONE_SHOT_COMMANDS:
            # A line per connection attempt is news for a worker, noise for a quick command.
            logging.getLogger("kiwitrio.reconnect").setLevel(logging.ERROR)


def _error(exc: BaseException) -> tuple[int, str]:
    """Exit code and one-line message for an exception that ended the command."""
    leaves = leaves_of(exc)
    if any(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
        return ExitCode.INTERRUPTED, "interrupted"
    leaf = next((leaf for leaf in leaves if not isinstance(leaf, trio.Cancelled)), leaves[0])
    if isinstance(leaf, CliError):
        return leaf.code, str(leaf)
    if isinstance(leaf, kiwitrio.ConnectionRefusedByBroker):
        # Reached, and refused: a setting to fix (its message says which), not an outage.
        return ExitCode.FAILURE, str(leaf)
    if isinstance(leaf, kiwitrio.ConnectionFailed):
        return ExitCode.CONNECTION_FAILED, str(leaf)
    if isinstance(leaf, kiwitrio.UnroutableError):
        return ExitCode.UNROUTABLE, str(leaf)
    if isinstance(leaf, kiwitrio.RemoteException):
        return ExitCode.FAILURE, f"remote {leaf.remote_type}: {leaf.remote_message}"
    if isinstance(leaf, trio.TooSlowError):
        return ExitCode.TIMEOUT, "timed out"
    if isinstance(leaf, kiwitrio.KiwitrioError):
        return ExitCode.FAILURE, f"{type(leaf).__name__}: {leaf}"
    if isinstance(leaf, TypeError) and "encode" in str(leaf):
        return ExitCode.USAGE, str(leaf)
    if isinstance(leaf, ValueError):
        # kiwitrio refuses values it cannot use with ValueError (a URL it cannot parse, an
        # identifier, sender or message too long): given on the command line, a usage error.
        return ExitCode.USAGE, str(leaf)
    return ExitCode.FAILURE, f"unexpected {type(leaf).__name__}: {leaf}"


def _run(args: argparse.Namespace) -> int:
    for module in COMMAND_MODULES:
        if args.command in module.COMMANDS:
            exit_code: int = module.run(args)
            return exit_code
    raise AssertionError(f"unknown command {args.command!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module docstring)."""
    args = parse_args(argv)
    _configure_logging(args.verbose, args.command)
    try:
        return _run(args)
    except SystemExit:
        raise
    except BaseException as exc:
        code, message = _error(exc)
        if args.verbose and code != ExitCode.INTERRUPTED:
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        if code != ExitCode.INTERRUPTED or args.verbose:
            eprint(f"{PROG}: error: {message}")
        else:
            eprint(f"{PROG}: interrupted")
        return code
