"""Peak memory and longest loop stall of a communicator per hostile payload (issue 15).

Run from the repository root: ``python -m tests.faults.measure_hostile [--kiwitrio DIR]``.
Each payload runs in a fresh process (capped at ``--cap-mb`` of address space, so that an
unbounded decoder fails there instead of taking the machine down): a ``memory://``
communicator with a broadcast subscriber, a 5 ms ticker task measuring the loop's pauses,
and the payload published raw as a broadcast. The process reports the longest pause, its
peak resident memory above what it had before, and what became of the communicator. A
watchdog thread reports a loop that stays frozen for ``--freeze-s`` seconds (no Trio
deadline can fire then) and ends the process.

``--kiwitrio DIR`` imports kiwitrio from DIR instead (for the "before" column: an export of
an older commit, e.g. ``git archive 4b75575 | tar -x -C /tmp/kt-before``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _status_mb(field: str) -> float:
    """VmRSS (resident now) or VmHWM (peak resident) of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise LookupError(field)


def _reset_peak() -> None:
    # Linux: writing 5 to clear_refs resets VmHWM to the current RSS, so that the peak
    # counts from here (not from building the payload).
    Path("/proc/self/clear_refs").write_text("5")


def _child(name: str, freeze_s: float, kiwitrio_dir: str | None) -> None:
    if kiwitrio_dir:
        # Ahead of the working directory, which ``-m`` put first.
        sys.path.insert(0, kiwitrio_dir)
    import logging

    import trio

    import kiwitrio
    from kiwitrio._backends import OutgoingMessage
    from tests.hostile import payload

    logging.basicConfig(level=logging.CRITICAL)
    body = payload(name).body
    result: dict[str, Any] = {"payload": name, "bytes": len(body),
                              "kiwitrio": str(Path(kiwitrio.__file__).parent)}
    last_tick = [time.monotonic()]

    def report(outcome: str) -> None:
        result["outcome"] = outcome
        result["peak_rss_above_baseline_mb"] = round(
            _status_mb("VmHWM") - result["baseline_mb"], 1)
        print(json.dumps(result), flush=True)

    def watchdog() -> None:
        while True:
            time.sleep(0.1)
            frozen = time.monotonic() - last_tick[0]
            if frozen > freeze_s:
                result["longest_stall_s"] = f">{freeze_s:g} (frozen)"
                report("frozen")
                os._exit(0)

    async def main() -> None:
        handled = trio.Event()
        longest = 0.0

        async def ticker() -> None:
            nonlocal longest
            while True:
                await trio.sleep(0.005)
                now = time.monotonic()
                longest = max(longest, now - last_tick[0])
                last_tick[0] = now

        async def listener(_comm: Any, body: Any, *_rest: Any) -> None:
            handled.set()

        class Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if record.levelno >= logging.ERROR:
                    handled.set()

        kiwitrio_logger = logging.getLogger("kiwitrio")
        kiwitrio_logger.setLevel(logging.ERROR)
        kiwitrio_logger.addHandler(Handler())
        outcome = "crashed"
        try:
            async with kiwitrio.open_communicator("memory://measure",
                                                  testing_mode=True) as comm, \
                    trio.open_nursery() as nursery:
                await comm.add_broadcast_subscriber(listener)
                await trio.sleep(0.2)
                _reset_peak()
                result["baseline_mb"] = _status_mb("VmRSS")
                last_tick[0] = time.monotonic()
                nursery.start_soon(ticker)
                await trio.sleep(0.05)
                message = OutgoingMessage(body, kiwitrio.CBOR_CONTENT_TYPE)
                sent = time.monotonic()
                await comm._ctx.session.publish("kiwitrio.messages", "x", message,
                                                mandatory=False)
                outcome = "not handled within 120 s"
                with trio.move_on_after(120):
                    await handled.wait()
                    result["handled_after_s"] = round(time.monotonic() - sent, 3)
                    outcome = "crashed"
                    # Still serving afterwards?
                    with trio.fail_after(5):
                        await comm.add_rpc_subscriber(lambda _c, m: m, "ping")
                        assert await (await comm.rpc_send("ping", 1)) == 1
                    outcome = "survived (message rejected)" if not comm.is_closed() else outcome
                await trio.sleep(0.05)
                nursery.cancel_scope.cancel()
        except BaseException as exc:  # what the payload did to the communicator
            outcome = f"crashed: {type(exc).__name__}"
        result.setdefault("baseline_mb", _status_mb("VmRSS"))
        result["longest_stall_s"] = round(longest, 3)
        report(outcome)

    threading.Thread(target=watchdog, daemon=True).start()
    trio.run(main)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kiwitrio", help="import kiwitrio from this directory")
    parser.add_argument("--cap-mb", type=int, default=3072)
    parser.add_argument("--freeze-s", type=float, default=20.0)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("names", nargs="*")
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.freeze_s, args.kiwitrio)
        return
    sys.path.insert(0, str(ROOT))
    from tests.hostile import payload_names

    names = args.names or payload_names()
    env = dict(os.environ)
    cap = args.cap_mb * 1024 * 1024

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    for name in names:
        try:
            done = subprocess.run(
                [sys.executable, "-m", "tests.faults.measure_hostile", "--child", name,
                 "--freeze-s", str(args.freeze_s),
                 *(["--kiwitrio", args.kiwitrio] if args.kiwitrio else [])],
                cwd=ROOT, env=env, preexec_fn=limit, capture_output=True, text=True,
                timeout=args.freeze_s + 180)
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            if lines:
                print(lines[-1], flush=True)
            else:
                tail = (done.stderr.strip().splitlines() or ["?"])[-1]
                print(json.dumps({"payload": name, "outcome": f"process died "
                                  f"(exit {done.returncode}): {tail[:120]}"}), flush=True)
        except subprocess.TimeoutExpired:
            print(json.dumps({"payload": name, "outcome": "timed out"}), flush=True)


if __name__ == "__main__":
    main()
