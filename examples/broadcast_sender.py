"""A broadcast sender: sends one broadcast (or several) to every listener.

    python examples/broadcast_sender.py hello
    python examples/broadcast_sender.py --subject jobs.done --sender scheduler "job 42 done"
    python examples/broadcast_sender.py --subject jobs.tick --repeat 5 --interval 0.5 tick

Start ``broadcast_listener.py`` first: broadcasts are fire-and-forget, nobody listening means
nobody gets them (and queued ones expire after 66 s).
"""

from __future__ import annotations

import argparse
import os
import sys

import trio

import kiwitrio

DEFAULT_URL = os.environ.get("KIWITRIO_URL", kiwitrio.DEFAULT_URL)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("body", nargs="?", default="hello", help="the message (default: hello)")
    parser.add_argument("--url", default=DEFAULT_URL,
                        help="broker URL (default: $KIWITRIO_URL or %(default)s)")
    parser.add_argument("--subject", default="greetings.hello",
                        help="the subject (default: %(default)s)")
    parser.add_argument("--sender", default=f"broadcast_sender-{os.getpid()}",
                        help="the sender (default: broadcast_sender-PID)")
    parser.add_argument("--repeat", type=int, default=1, help="how many to send (default 1)")
    parser.add_argument("--interval", type=float, default=0.0,
                        help="seconds between two broadcasts (default 0)")
    return parser.parse_args()


async def main(args: argparse.Namespace) -> None:
    async with kiwitrio.open_communicator(args.url) as comm:
        for i in range(args.repeat):
            if i:
                await trio.sleep(args.interval)
            body = args.body if args.repeat == 1 else f"{args.body} #{i + 1}"
            # Returns once the broker has the broadcast.
            await comm.broadcast_send(body, sender=args.sender, subject=args.subject)
            print(f"sent [{args.subject}] from {args.sender}: {body!r}")


if __name__ == "__main__":
    try:
        trio.run(main, parse_args())
    except kiwitrio.ConnectionFailed as exc:
        sys.exit(f"broadcast_sender: cannot reach the broker: {exc}")
