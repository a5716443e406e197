"""Profile kiwitrio's hot paths with pyinstrument (``pip install pyinstrument``).

    python benchmarks/profile_hot_paths.py publish  [--count 20000] [--impl kiwitrio|aio-pika]
    python benchmarks/profile_hot_paths.py tasks    [--count 5000]  [--impl kiwitrio|aio-pika]
    python benchmarks/profile_hot_paths.py consume  [--count 20000] [--impl kiwitrio|aio-pika]
    python benchmarks/profile_hot_paths.py rpc      [--count 2000]  (kiwitrio only)
    (any of them: [--size BYTES], the body, 1024 by default)

``publish``: confirmed persistent publishes (200 in flight). ``tasks``: task round trips with
two worker processes; the client and the first worker are profiled (the worker through
``python -m pyinstrument``). ``consume``: consume + ack of a prefilled queue (only the consuming
part is profiled). ``rpc``: calls one at a time to an RPC subscriber in a worker process (the
client and the worker are profiled). Profiles go to
``benchmarks/results/profiles/<what>-<impl>-<side>.txt``
(self time per library and per function, then the call tree; ``-<size>`` before ``.txt`` for a
body other than 1 KiB); ``--html`` also writes pyinstrument's
HTML view and the ``.pyisession`` (tens of MB each). The elapsed time and rate are printed; the
profiler slows everything down, so compare CPU times and shares, not these rates.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import (
    DEFAULT_URL,
    HERE,
    PREFETCH,
    WORKER_PROCESSES,
    clean_up,
    helpers,
    new_prefix,
    payload,
)

OUT = os.path.join(HERE, "results", "profiles")


def profiler() -> Any:
    from pyinstrument import Profiler

    return Profiler(interval=0.0005, async_mode="disabled")


def flat(prof: Any, top: int = 40) -> str:
    """Self time per function, and time per library (the call tree hides library frames)."""
    session = prof.last_session
    root = session.root_frame()
    own: dict[str, float] = {}
    libraries: dict[str, float] = {}

    def visit(frame: Any) -> None:
        # pyinstrument puts a function's own time in a synthetic "[self]" child frame.
        owner = frame.parent if frame.function == "[self]" and frame.parent else frame
        self_time = frame.time - sum(child.time for child in frame.children)
        if self_time > 0:
            key = f"{owner.function}  {owner.file_path_short}:{owner.line_no}"
            own[key] = own.get(key, 0.0) + self_time
            path = owner.file_path or ""
            library = ("kiwitrio" if "/kiwitrio/" in path or "/kiwitrio_sync/" in path
                       else path.split("site-packages/")[1].split("/")[0]
                       if "site-packages/" in path else
                       "built-in (select/epoll, C calls)" if not path or path.startswith("<")
                       else "python stdlib / other")
            libraries[library] = libraries.get(library, 0.0) + self_time
        for child in frame.children:
            visit(child)

    visit(root)
    total = root.time or 1.0
    lines = [f"Self time by library ({total:.2f} s sampled, CPU {session.cpu_time:.2f} s):"]
    for name, seconds in sorted(libraries.items(), key=lambda kv: -kv[1])[:15]:
        lines.append(f"  {seconds:7.2f} s {seconds / total:6.1%}  {name}")
    lines.append(f"Self time by function (top {top}):")
    for name, seconds in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {seconds:7.2f} s {seconds / total:6.1%}  {name}")
    return "\n".join(lines) + "\n\n"


HTML = "--html" in sys.argv


def save(prof: Any, name: str) -> None:
    os.makedirs(OUT, exist_ok=True)
    text = flat(prof) + prof.output_text(unicode=True, color=False, show_all=True)
    with open(os.path.join(OUT, f"{name}.txt"), "w") as out:
        out.write(text)
    if HTML:
        with open(os.path.join(OUT, f"{name}.html"), "w") as out:
            out.write(prof.output_html())
        prof.last_session.save(os.path.join(OUT, f"{name}.pyisession"))
    print(f"profile: {os.path.relpath(os.path.join(OUT, name), os.getcwd())}.txt"
          + (" (.html, .pyisession)" if HTML else ""))


def worker_argv(impl: str, prefix: str, url: str, profile_to: str | None,
                extra: tuple[str, ...] = ()) -> list[str]:
    script = os.path.join(HERE, "worker_kiwitrio.py" if impl == "kiwitrio" else
                          "worker_aiopika.py")
    head = [sys.executable]
    if profile_to:
        head += ["-m", "pyinstrument", "--interval", "0.0005", "-r", "text", "--no-color",
                 "--show-all", "-o", profile_to]
    return [*head, script, "tasks", "--url", url, "--prefix", prefix, *extra]


# -- kiwitrio ------------------------------------------------------------------------------------


async def kiwitrio_run(what: str, url: str, prefix: str, count: int, size: int) -> float:
    import kiwitrio
    from benchmarks._common import kiwi_names
    from benchmarks.client_kiwitrio import RPC_ID, counting_subscriber, lanes

    body = payload(size)
    options = {**kiwi_names(prefix), "testing_mode": True, "task_prefetch_count": PREFETCH}
    async with kiwitrio.open_communicator(url, **options) as comm:
        if what == "publish":
            async def publish() -> None:
                await comm.task_send(body, no_reply=True)

            await lanes(200, publish)
            prof = profiler()
            prof.start()
            elapsed = await lanes(count, publish)
            prof.stop()
        elif what == "consume":
            async def publish() -> None:
                await comm.task_send(body, no_reply=True)

            await lanes(count, publish)
            consume, done = counting_subscriber(count)
            prof = profiler()
            prof.start()
            start = time.perf_counter()
            await comm.add_task_subscriber(consume)
            await done.wait()
            elapsed = time.perf_counter() - start
            prof.stop()
        elif what == "rpc":
            for _ in range(200):
                await (await comm.rpc_send(RPC_ID, body))
            prof = profiler()
            prof.start()
            start = time.perf_counter()
            for _ in range(count):
                await (await comm.rpc_send(RPC_ID, body))
            elapsed = time.perf_counter() - start
            prof.stop()
        else:
            async def round_trip() -> None:
                await (await comm.task_send(body))

            await lanes(200, round_trip)
            prof = profiler()
            prof.start()
            elapsed = await lanes(count, round_trip)
            prof.stop()
    save(prof, f"{what}-kiwitrio{_sized(size)}-client")
    return elapsed


# -- aio-pika ------------------------------------------------------------------------------------


async def aiopika_run(what: str, url: str, prefix: str, count: int, size: int) -> float:
    import aio_pika

    from benchmarks.client_aiopika import TaskSender, lanes

    body = payload(size).encode()
    connection = await aio_pika.connect(url)
    async with connection:
        sender = TaskSender(connection, prefix)
        await sender.open()
        if what in ("publish", "consume"):
            async def publish() -> None:
                await sender.send(body, no_reply=True)

            if what == "publish":
                await lanes(200, publish)
                prof = profiler()
                prof.start()
                elapsed = await lanes(count, publish)
                prof.stop()
            else:
                await lanes(count, publish)
                seen = 0
                done = asyncio.Event()
                channel = await connection.channel()
                await channel.set_qos(prefetch_count=PREFETCH)

                async def consume(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                    nonlocal seen
                    seen += 1
                    if seen == count:
                        done.set()
                    await message.ack()

                prof = profiler()
                prof.start()
                start = time.perf_counter()
                queue = await channel.get_queue(f"{prefix}.q", ensure=False)
                await queue.consume(consume)
                await done.wait()
                elapsed = time.perf_counter() - start
                prof.stop()
        else:
            async def round_trip() -> None:
                await (await sender.send(body))  # type: ignore[misc]

            await lanes(200, round_trip)
            prof = profiler()
            prof.start()
            elapsed = await lanes(count, round_trip)
            prof.stop()
        await sender.close()
    save(prof, f"{what}-aiopika{_sized(size)}-client")
    return elapsed


def _sized(size: int) -> str:
    """The size in a profile's name: none for the default 1 KiB."""
    return "" if size == 1024 else f"-{size}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["publish", "tasks", "consume", "rpc"])
    parser.add_argument("--impl", choices=["kiwitrio", "aio-pika"], default="kiwitrio")
    parser.add_argument("--count", type=int, default=None)
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--size", type=int, default=1024, help="body bytes (default 1024)")
    parser.add_argument("--html", action="store_true", help="also write HTML and the session")
    args = parser.parse_args()
    if args.what == "rpc" and args.impl != "kiwitrio":
        parser.error("rpc is profiled for kiwitrio only")
    count = args.count or {"tasks": 5000, "rpc": 2000}.get(args.what, 20000)
    prefix = new_prefix("profile")
    os.makedirs(OUT, exist_ok=True)
    tag = ("kiwitrio" if args.impl == "kiwitrio" else "aiopika") + _sized(args.size)
    try:
        with helpers() as group:
            if args.what == "tasks":
                for index in range(WORKER_PROCESSES):
                    target = (os.path.join(OUT, f"tasks-{tag}-worker.txt")
                              if index == 0 else None)
                    group.spawn(worker_argv(args.impl, prefix, args.url, target))
                group.wait_for("ready")
            elif args.what == "rpc":
                from benchmarks.client_kiwitrio import RPC_ID

                group.spawn(worker_argv(args.impl, prefix, args.url,
                                        os.path.join(OUT, f"rpc-{tag}-worker.txt"),
                                        ("--rpc", RPC_ID)))
                group.wait_for("ready")
            if args.impl == "kiwitrio":
                import trio

                elapsed = trio.run(kiwitrio_run, args.what, args.url, prefix, count,
                                   args.size)
            else:
                elapsed = asyncio.run(aiopika_run(args.what, args.url, prefix, count,
                                                  args.size))
            group.stop()
    finally:
        clean_up(args.url, [prefix])
    print(f"{args.impl} {args.what}: {count} in {elapsed:.2f} s = {count / elapsed:,.0f}/s "
          "(under the profiler)")


if __name__ == "__main__":
    main()
