"""kiwitrio end to end, in one command: a pool of worker processes, tasks, RPC and broadcasts.

    bash scripts/demo.sh                 # makes sure a broker answers, sets up .venv, runs this
    python examples/demo.py              # the same, with a broker and kiwitrio already there
    python examples/demo.py --workers 5 --tasks 50

What it does:

1. starts ``--workers`` processes of ``examples/worker.py`` and waits until each says it is
   ready;
2. sends ``--tasks`` tasks and prints each result with the worker (and pid) that did it, plus
   one bad task whose exception comes back as ``kiwitrio.RemoteException``;
3. asks every worker over RPC how many tasks it did (they must add up), and calls an
   identifier nobody answers (``kiwitrio.UnroutableError``);
4. listens for broadcasts through a ``kiwitrio.BroadcastFilter`` and checks that only the
   matching ones get through;
5. prints a summary, stops the workers with SIGTERM and exits 0 if every check passed (1 if
   one failed, 2 on a timeout).

Every name on the broker (exchanges, queues, RPC identifiers) is unique to this run and the
communicators run in testing mode, so the demo leaves nothing behind: exchanges are deleted
with their last binding, and the task queues expire a minute after their last consumer left.
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import trio

import kiwitrio

DEFAULT_URL = os.environ.get("KIWITRIO_URL", kiwitrio.DEFAULT_URL)
WORKER_SCRIPT = Path(__file__).resolve().with_name("worker.py")
READY_PREFIX = "worker ready:"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL,
                        help="broker URL (default: $KIWITRIO_URL or %(default)s)")
    parser.add_argument("--workers", type=int, default=3, help="worker processes (default 3)")
    parser.add_argument("--tasks", type=int, default=20, help="tasks to send (default 20)")
    parser.add_argument("--delay", type=float, default=0.1,
                        help="seconds each task keeps a worker busy (default 0.1)")
    parser.add_argument("--timeout", type=float, default=20.0,
                        help="give up after this many seconds (default 20)")
    args = parser.parse_args()
    if args.workers < 1 or args.tasks < 1:
        parser.error("--workers and --tasks must be at least 1")
    return args


def redact(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


class Checks:
    """What the demo verified, for the summary and the exit code."""

    def __init__(self) -> None:
        self.results: list[tuple[str, bool, str]] = []

    def record(self, name: str, ok: bool, detail: str) -> bool:
        self.results.append((name, ok, detail))
        if not ok:
            print(f"  FAILED: {name}: {detail}")
        return ok

    @property
    def all_ok(self) -> bool:
        return bool(self.results) and all(ok for _, ok, _ in self.results)


class Worker:
    """One ``worker.py`` process; its output is echoed with its name in front."""

    def __init__(self, name: str, process: trio.Process) -> None:
        self.name = name
        self.process = process
        self.ready = trio.Event()
        self.output_ended = trio.Event()

    @classmethod
    async def spawn(cls, name: str, url: str, names: dict[str, str]) -> Worker:
        command = [
            sys.executable, str(WORKER_SCRIPT), "--url", url, "--name", name, "--rpc-id", name,
            "--queue", names["task_queue"], "--task-exchange", names["task_exchange"],
            "--message-exchange", names["message_exchange"], "--testing", "--quiet",
        ]
        process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE)
        return cls(name, process)

    async def echo_output(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        try:
            async for chunk in self.process.stdout:
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    self._line(line.decode(errors="replace"))
            if buffer:
                self._line(buffer.decode(errors="replace"))
        finally:
            self.output_ended.set()

    def _line(self, line: str) -> None:
        print(f"    {self.name} | {line}", flush=True)
        if line.startswith(READY_PREFIX):
            self.ready.set()

    async def wait_ready(self) -> None:
        """Return once the worker is ready; raise RuntimeError if it ended before."""
        async with trio.open_nursery() as nursery:

            async def wait(event: trio.Event) -> None:
                await event.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(wait, self.ready)
            nursery.start_soon(wait, self.output_ended)
        if not self.ready.is_set():
            await self.process.wait()
            raise RuntimeError(f"{self.name} exited with {self.process.returncode} "
                               "before it was ready (its error is above)")

    def terminate(self) -> None:
        """Ask the worker to stop (SIGTERM): it finishes or gives back its tasks and exits."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)

    async def wait_stopped(self, grace: float = 5.0) -> int | None:
        """Wait for the exit; SIGKILL it after ``grace`` seconds. Returns the exit code."""
        with trio.move_on_after(grace):
            await self.process.wait()
        if self.process.returncode is None:
            print(f"  {self.name} did not stop within {grace}s: killing it")
            self.process.kill()
            await self.process.wait()
        return self.process.returncode


async def run_tasks(comm: kiwitrio.Communicator, args: argparse.Namespace,
                    checks: Checks) -> collections.Counter[str]:
    print(f"\n== Tasks: sending {args.tasks} tasks (x -> x^2, {args.delay}s each)")
    start = time.monotonic()
    handles = [await comm.task_send({"x": x, "delay": args.delay}) for x in range(args.tasks)]
    by_worker: collections.Counter[str] = collections.Counter()
    wrong = 0
    for x, handle in enumerate(handles):
        result = await handle
        by_worker[f"{result['worker']} (pid {result['pid']})"] += 1
        wrong += result["y"] != x * x
        print(f"  task {x:3}: {f'{x}^2':>5} = {result['y']:<5} done by {result['worker']} "
              f"(pid {result['pid']})")
    elapsed = time.monotonic() - start
    spread = ", ".join(f"{who}: {n}" for who, n in sorted(by_worker.items()))
    print(f"  {len(handles)} results in {elapsed:.2f}s; {spread}")
    checks.record("tasks", wrong == 0 and sum(by_worker.values()) == args.tasks,
                  f"{args.tasks - wrong}/{args.tasks} correct results from "
                  f"{len(by_worker)} workers in {elapsed:.2f}s")

    print("  sending a bad task ({'x': 'oops'}): the worker raises, we get RemoteException")
    try:
        value = await (await comm.task_send({"x": "oops"}))
    except kiwitrio.RemoteException as exc:
        print(f"  -> RemoteException: {exc.remote_type}: {exc.remote_message}")
        checks.record("task error", exc.remote_type == "TypeError", f"remote {exc}")
    else:
        checks.record("task error", False, f"expected RemoteException, got {value!r}")
    return by_worker


async def run_rpc(comm: kiwitrio.Communicator, workers: list[Worker], tasks: int,
                  checks: Checks) -> None:
    print("\n== RPC: asking each worker how many tasks it did")
    total = 0
    for worker in workers:
        start = time.monotonic()
        status = await (await comm.rpc_send(worker.name, "how many tasks?"))
        total += status["tasks_done"]
        print(f"  rpc_send({worker.name!r}) -> {status!r} "
              f"({(time.monotonic() - start) * 1000:.1f} ms)")
    checks.record("rpc", total == tasks,
                  f"{len(workers)} workers answered; their task counts add up to {total}"
                  f" (expected {tasks})")
    print("  rpc_send('nobody-home') -> ", end="")
    try:
        await comm.rpc_send("nobody-home", "hello?")
    except kiwitrio.UnroutableError as exc:
        print(f"UnroutableError: {exc}")
        checks.record("rpc unroutable", True, "a call to nobody fails at once")
    else:
        print("no error")
        checks.record("rpc unroutable", False, "a call to nobody did not raise UnroutableError")


async def run_broadcasts(comm: kiwitrio.Communicator, checks: Checks) -> None:
    print("\n== Broadcasts: a listener filtered on subject 'demo.greeting.*'")
    received: list[tuple[Any, Any, Any]] = []
    got_last = trio.Event()

    async def listener(comm: kiwitrio.Communicator, body: Any, sender: Any, subject: Any,
                       correlation_id: Any) -> None:
        print(f"  listener got [{subject}] from {sender}: {body!r}")
        received.append((subject, sender, body))
        if body == "last":
            got_last.set()

    identifier = await comm.add_broadcast_subscriber(
        kiwitrio.BroadcastFilter(listener, subject="demo.greeting.*")
    )
    sent = [("demo.greeting", "filtered out: no word after 'demo.greeting.'"),
            ("demo.other", "filtered out: other subject"),
            ("demo.greeting.hello", "hello"),
            ("demo.greeting.bye", "last")]
    for subject, body in sent:
        await comm.broadcast_send(body, sender="demo", subject=subject)
        print(f"  sent [{subject}]: {body!r}")
    with trio.move_on_after(5):
        await got_last.wait()
    await trio.sleep(0.2)  # anything that should have been filtered would be here by now
    await comm.remove_broadcast_subscriber(identifier)
    subjects = sorted(subject for subject, _, _ in received)
    expected = ["demo.greeting.bye", "demo.greeting.hello"]
    checks.record("broadcasts", subjects == expected,
                  f"received {subjects}, expected {expected}")


async def demo(args: argparse.Namespace, checks: Checks) -> None:
    run_id = uuid.uuid4().hex[:10]
    prefix = f"kiwitrio-demo-{run_id}"
    names = {"task_exchange": f"{prefix}.tasks", "message_exchange": f"{prefix}.messages",
             "task_queue": f"{prefix}.tasks"}
    print(f"kiwitrio {kiwitrio.__version__} demo: broker {redact(args.url)}, run {run_id}")
    async with kiwitrio.open_communicator(args.url, testing_mode=True, **names) as comm:
        version = comm.server_properties.get("version", "?")
        product = comm.server_properties.get("product", "?")
        print(f"connected to {product} {version}")
        workers: list[Worker] = []
        async with trio.open_nursery() as nursery:
            try:
                print(f"\n== Starting {args.workers} worker processes")
                start = time.monotonic()
                for i in range(args.workers):
                    worker = await Worker.spawn(f"worker-{i}", args.url, names)
                    workers.append(worker)
                    nursery.start_soon(worker.echo_output)
                for worker in workers:
                    await worker.wait_ready()
                print(f"  {len(workers)} workers ready in {time.monotonic() - start:.2f}s")

                await run_tasks(comm, args, checks)
                await run_rpc(comm, workers, args.tasks, checks)
                await run_broadcasts(comm, checks)
            finally:
                with trio.CancelScope(shield=True):
                    print(f"\n== Stopping {len(workers)} workers (SIGTERM)")
                    for worker in workers:
                        worker.terminate()
                    codes = {worker.name: await worker.wait_stopped() for worker in workers}
                    if workers:
                        checks.record("workers stopped", all(c == 0 for c in codes.values()),
                                      f"exit codes {codes}")


def main() -> int:
    args = parse_args()
    checks = Checks()
    start = time.monotonic()

    async def run() -> None:
        with trio.fail_after(args.timeout):
            await demo(args, checks)

    status = 0
    try:
        trio.run(run)
    except trio.TooSlowError:
        print(f"\nFAILED: the demo did not finish within {args.timeout}s")
        status = 2
    except Exception as exc:
        # Trio nurseries wrap errors in exception groups: show the error itself.
        while isinstance(getattr(exc, "exceptions", None), tuple) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
        if isinstance(exc, kiwitrio.ConnectionFailed):
            print(f"\nFAILED: cannot reach the broker: {exc}\n"
                  "(bash scripts/ensure-broker.sh starts or installs one)")
        else:
            print(f"\nFAILED with {type(exc).__name__}: {exc}")
        status = 1

    print("\n== Summary")
    for name, ok, detail in checks.results:
        print(f"  [{'ok' if ok else 'FAILED'}] {name}: {detail}")
    ok = status == 0 and checks.all_ok
    print(f"demo {'passed' if ok else 'FAILED'} in {time.monotonic() - start:.1f}s")
    return 0 if ok else (status or 1)


if __name__ == "__main__":
    sys.exit(main())
