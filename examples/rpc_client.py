"""An RPC client: calls the subscriber with the given identifier and prints its answer.

Start ``python examples/rpc_server.py calculator``, then::

    python examples/rpc_client.py calculator "6 * 7"
    python examples/rpc_client.py calculator "1 / 0"       # the server raises: RemoteException
    python examples/rpc_client.py nobody "1 + 1"           # nobody listens: UnroutableError

Exits non-zero if the call failed.
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
    parser.add_argument("identifier", help="the RPC identifier to call")
    parser.add_argument("message", nargs="?", default="1 + 2",
                        help="the message to send (default: %(default)r)")
    parser.add_argument("--url", default=DEFAULT_URL,
                        help="broker URL (default: $KIWITRIO_URL or %(default)s)")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for the answer (default 10)")
    return parser.parse_args()


async def main(args: argparse.Namespace) -> int:
    async with kiwitrio.open_communicator(args.url) as comm:
        try:
            with trio.fail_after(args.timeout):
                answer = await (await comm.rpc_send(args.identifier, args.message))
        except kiwitrio.UnroutableError:
            print(f"nobody answers calls to {args.identifier!r}")
            return 1
        except kiwitrio.RemoteException as exc:
            print(f"the subscriber raised {exc.remote_type}: {exc.remote_message}")
            return 1
        except trio.TooSlowError:
            # The call reached the subscriber, which did not answer in time: it may still act.
            print(f"no answer within {args.timeout}s (the call may still be handled)")
            return 1
    print(f"{args.identifier} answered: {answer!r}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(trio.run(main, parse_args()))
    except kiwitrio.ConnectionFailed as exc:
        sys.exit(f"rpc_client: cannot reach the broker: {exc}")
