"""An RPC server: answers calls sent to an identifier, until SIGINT (Ctrl-C) or SIGTERM.

    python examples/rpc_server.py calculator

and from another terminal ``python examples/rpc_client.py calculator "1 + 2"``. A message is
a string ``"<a> <op> <b>"`` with op one of ``+ - * /``; the answer is a dict with the value.
Anything else makes the subscriber raise, and the caller gets a ``kiwitrio.RemoteException``.

An identifier is unique on the broker: a second server with the same one fails with
``kiwitrio.DuplicateSubscriberIdentifier``.
"""

from __future__ import annotations

import argparse
import operator
import os
import signal
import sys
from typing import Any

import trio

import kiwitrio

DEFAULT_URL = os.environ.get("KIWITRIO_URL", kiwitrio.DEFAULT_URL)

OPERATORS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("identifier", help="the RPC identifier to answer calls for")
    parser.add_argument("--url", default=DEFAULT_URL,
                        help="broker URL (default: $KIWITRIO_URL or %(default)s)")
    return parser.parse_args()


def calculate(comm: kiwitrio.Communicator, msg: Any) -> dict[str, Any]:
    # A plain function: kiwitrio runs it in a worker thread, so it could block.
    if not isinstance(msg, str):
        raise TypeError(f"expected a string like '1 + 2', got {msg!r}")
    a, op, b = msg.split()
    if op not in OPERATORS:
        raise ValueError(f"unknown operator {op!r}")
    value = OPERATORS[op](float(a), float(b))
    print(f"{msg} = {value}", flush=True)
    return {"expression": msg, "value": value, "server_pid": os.getpid()}


async def main(args: argparse.Namespace) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with kiwitrio.open_communicator(args.url) as comm:
            await comm.add_rpc_subscriber(calculate, args.identifier)
            print(f"rpc server ready: answering calls to {args.identifier!r} "
                  f"(pid {os.getpid()}); Ctrl-C to stop", flush=True)
            async for _ in signals:
                break
    print("rpc server stopped")


if __name__ == "__main__":
    try:
        trio.run(main, parse_args())
    except kiwitrio.ConnectionFailed as exc:
        sys.exit(f"rpc_server: cannot reach the broker: {exc}")
    except kiwitrio.DuplicateSubscriberIdentifier as exc:
        sys.exit(f"rpc_server: {exc}")
