"""An asyncio program, written the way AiiDA's daemon and plumpy are, that uses kiwitrio_sync.

Run by tests/test_host_asyncio.py in a fresh interpreter:

    python asyncio_program.py URL PREFIX run|manual

``run`` drives its loop with ``asyncio.run``; ``manual`` makes a loop, sets it as the
thread's current loop and drives it with ``run_until_complete``, as older code does. Either
way the program checks that importing and using kiwitrio_sync left asyncio as it was, and
that the host loop serves callbacks that kiwitrio_sync's subscribers schedule on it with
``call_soon_threadsafe``. Prints ``OK <mode>`` and exits 0 when every check passed.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any


def asyncio_functions() -> dict[str, Any]:
    return {name: getattr(asyncio, name) for name in
            ("get_event_loop", "new_event_loop", "set_event_loop", "get_running_loop",
             "_get_running_loop", "get_event_loop_policy", "set_event_loop_policy")}


BEFORE_IMPORT = asyncio_functions()
POLICY_BEFORE = asyncio.get_event_loop_policy()

import kiwitrio_sync  # noqa: E402 - the point is to compare before and after this import


def check_asyncio_untouched(when: str) -> None:
    assert asyncio_functions() == BEFORE_IMPORT, f"asyncio functions replaced {when}"
    assert asyncio.get_event_loop_policy() is POLICY_BEFORE, f"policy replaced {when}"
    assert "trio_asyncio" not in sys.modules, f"trio_asyncio imported {when}"


async def scenario(url: str, prefix: str, loop: asyncio.AbstractEventLoop) -> None:
    # Old code asks for "the" loop rather than the running one; it must get its own.
    assert asyncio.get_event_loop() is loop
    seen: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def on_host_loop(kind: str, value: Any) -> None:
        assert asyncio.get_running_loop() is loop
        seen.put_nowait((kind, value))

    def task_subscriber(_comm: Any, task: int) -> int:
        loop.call_soon_threadsafe(on_host_loop, "task", task)
        return task * 2

    def rpc_subscriber(_comm: Any, msg: str) -> str:
        loop.call_soon_threadsafe(on_host_loop, "rpc", msg)
        return msg.upper()

    def broadcast_subscriber(_comm: Any, body: Any, sender: Any, subject: Any,
                             _correlation_id: Any) -> None:
        loop.call_soon_threadsafe(on_host_loop, "broadcast", (body, sender, subject))

    options = {"message_exchange": f"{prefix}.messages", "task_exchange": f"{prefix}.tasks",
               "task_queue": f"{prefix}.tasks", "testing_mode": True}
    with kiwitrio_sync.connect(url, **options) as comm:
        check_asyncio_untouched("by connect()")
        comm.add_task_subscriber(task_subscriber)
        comm.add_rpc_subscriber(rpc_subscriber, f"{prefix}.process")
        comm.add_broadcast_subscriber(broadcast_subscriber)

        # Results as asyncio futures, as plumpy's LoopCommunicator hands them on.
        result = await asyncio.wait_for(asyncio.wrap_future(comm.task_send(21)), 30)
        assert result == 42, result
        answer = await asyncio.wait_for(
            asyncio.wrap_future(comm.rpc_send(f"{prefix}.process", "pause")), 30)
        assert answer == "PAUSE", answer
        comm.broadcast_send({"pk": 7}, sender="proc", subject="state_changed.a.b")

        got = {}
        while len(got) < 3:
            kind, value = await asyncio.wait_for(seen.get(), 30)
            got[kind] = value
        assert got == {"task": 21, "rpc": "pause",
                       "broadcast": ({"pk": 7}, "proc", "state_changed.a.b")}, got
        # The host loop kept running its own callbacks meanwhile.
        timer = loop.create_future()
        loop.call_later(0.01, timer.set_result, "timer")
        assert await asyncio.wait_for(timer, 10) == "timer"
        # A blocking call straight from a coroutine works too (it blocks this loop briefly).
        assert comm.task_send(5).result(timeout=30) == 10
    check_asyncio_untouched("by using a communicator")
    assert asyncio.get_event_loop() is loop


def main() -> None:
    url, prefix, mode = sys.argv[1:4]
    check_asyncio_untouched("by import kiwitrio_sync")
    if mode == "run":
        async def run() -> None:
            await scenario(url, prefix, asyncio.get_running_loop())

        asyncio.run(run())
    elif mode == "manual":
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(scenario(url, prefix, loop))
        finally:
            asyncio.set_event_loop(None)
            loop.close()
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    check_asyncio_untouched("at the end")
    print(f"OK {mode}", flush=True)


if __name__ == "__main__":
    main()
