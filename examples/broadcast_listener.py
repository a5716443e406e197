"""A broadcast listener: prints the broadcasts it receives, optionally filtered.

    python examples/broadcast_listener.py                          # every broadcast
    python examples/broadcast_listener.py --subject 'jobs.*'       # subjects starting "jobs."
    python examples/broadcast_listener.py --sender scheduler -n 3  # stop after 3

and from another terminal ``python examples/broadcast_sender.py --subject jobs.done hello``.
Filters use :class:`kiwitrio.BroadcastFilter`: in a filter string ``*`` matches any run of
characters. As in kiwiPy, a broadcast without a subject (or sender) is not filtered on it.
Runs until SIGINT (Ctrl-C), SIGTERM, or ``--count`` broadcasts.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

import trio

import kiwitrio

DEFAULT_URL = os.environ.get("KIWITRIO_URL", kiwitrio.DEFAULT_URL)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL,
                        help="broker URL (default: $KIWITRIO_URL or %(default)s)")
    parser.add_argument("--subject", default=None,
                        help="only broadcasts whose subject matches ('*' is a wildcard)")
    parser.add_argument("--sender", default=None,
                        help="only broadcasts from this sender ('*' is a wildcard)")
    parser.add_argument("-n", "--count", type=int, default=None,
                        help="stop after this many broadcasts")
    return parser.parse_args()


async def main(args: argparse.Namespace) -> None:
    received = 0
    enough = trio.Event()

    # An async subscriber runs in a Trio task (a plain function would run in a thread).
    async def show(comm: kiwitrio.Communicator, body: Any, sender: Any, subject: Any,
                   correlation_id: Any) -> None:
        nonlocal received
        received += 1
        print(f"[{subject}] from {sender}: {body!r}", flush=True)
        if args.count is not None and received >= args.count:
            enough.set()

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with kiwitrio.open_communicator(args.url) as comm:
            await comm.add_broadcast_subscriber(
                kiwitrio.BroadcastFilter(show, subject=args.subject, sender=args.sender)
            )
            print(f"listening for broadcasts (subject={args.subject or 'any'}, "
                  f"sender={args.sender or 'any'}); Ctrl-C to stop", flush=True)
            async with trio.open_nursery() as nursery:

                async def stop_on_signal() -> None:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()

                nursery.start_soon(stop_on_signal)
                await enough.wait()
                nursery.cancel_scope.cancel()
    print(f"received {received} broadcasts")


if __name__ == "__main__":
    try:
        trio.run(main, parse_args())
    except kiwitrio.ConnectionFailed as exc:
        sys.exit(f"broadcast_listener: cannot reach the broker: {exc}")
