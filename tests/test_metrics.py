"""Metrics: the core's reports to a sink, and ``kiwitrio worker --metrics-port``."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio

import kiwitrio
from kiwitrio import _metrics

from .conftest import Names
from .test_cli import UNREACHABLE_URL, Background, background, cli_env, flags, run

__all__ = ["background", "cli_env"]  # fixtures, used by name

DEADLINE = 20


class Recorder:
    def __init__(self) -> None:
        self.sent: list[str] = []
        self.handled: list[tuple[str, str]] = []
        self.durations: list[float] = []
        self.rejected = trio.Event()  # reported in the Trio thread: an Event can tell

    def sent_(self, kind: str, seconds: float) -> None:
        self.sent.append(kind)
        self.durations.append(seconds)

    def handled_(self, kind: str, outcome: str, seconds: float) -> None:
        self.handled.append((kind, outcome))
        if outcome == "rejected":
            self.rejected.set()
        self.durations.append(seconds)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    recorder = Recorder()
    sink: Any = type("RecordingSink", (), {"sent": lambda self, *a: recorder.sent_(*a),
                                           "handled": lambda self, *a: recorder.handled_(*a)})()
    _metrics.set_sink(sink)
    try:
        yield recorder
    finally:
        _metrics.set_sink(None)


async def test_the_core_reports_each_kind_sent_and_handled(names: Names,
                                                          recorder: Recorder) -> None:
    heard = trio.Event()

    async def on_broadcast(*_: Any) -> None:
        heard.set()

    async def tasks(_comm: Any, task: str) -> str:
        if task == "no":
            raise kiwitrio.TaskRejected("not mine")
        if task == "bad":
            raise ValueError(task)
        return task

    async with kiwitrio.open_communicator(f"memory://{names.prefix}") as comm:
        await comm.add_task_subscriber(tasks)
        await comm.add_rpc_subscriber(lambda _comm, msg: msg, "echo")
        await comm.add_broadcast_subscriber(on_broadcast)
        with trio.fail_after(DEADLINE):
            assert await (await comm.task_send("ok")) == "ok"
            with pytest.raises(kiwitrio.RemoteException):
                await (await comm.task_send("bad"))
            assert await (await comm.rpc_send("echo", 1)) == 1
            await comm.broadcast_send("hi")
            await heard.wait()
            queue = await comm.task_queue(f"{names.prefix}.declined")
            identifier = await queue.add_task_subscriber(tasks)
            await queue.task_send("no", no_reply=True)
            await recorder.rejected.wait()
            await queue.remove_task_subscriber(identifier)
    assert recorder.sent == ["task", "task", "rpc", "broadcast", "task"]
    assert recorder.handled[:4] == [("task", "done"), ("task", "failed"), ("rpc", "done"),
                                    ("broadcast", "done")]
    assert ("task", "rejected") in recorder.handled
    assert all(seconds >= 0 for seconds in recorder.durations)


def test_importing_kiwitrio_does_not_import_prometheus_client() -> None:
    code = ("import sys, kiwitrio, kiwitrio._cli, kiwitrio_sync; "
            "print('prometheus_client' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.strip() == "False", done


def test_metrics_port_without_prometheus_client_is_a_usage_error(
    cli_env: dict[str, str],
) -> None:
    # prometheus_client hidden (None in sys.modules makes its import fail); checked before
    # connecting: the unreachable broker is never tried.
    code = ("import sys; sys.modules['prometheus_client'] = None; "
            "from kiwitrio._cli import main; sys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", code, "worker", "kt_cli_tasks:square",
                           "--metrics-port", "0", "--url", UNREACHABLE_URL],
                          env=cli_env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 2, done
    assert "--metrics-port needs prometheus_client" in done.stderr, done
    assert "kiwitrio[metrics]" in done.stderr and "Traceback" not in done.stderr, done


def test_worker_serves_task_metrics(names: Names, cli_env: dict[str, str],
                                    background: Callable[..., Background]) -> None:
    pytest.importorskip("prometheus_client")
    worker = background("worker", "worker", "kt_cli_tasks:square", "--metrics-port", "0",
                        *flags(names))
    worker.wait_for("kiwitrio worker ready")
    found = re.search(r"metrics on http://0\.0\.0\.0:(\d+)/metrics", worker.stderr())
    assert found, worker.describe()
    result = run(cli_env, "send", "--json", "--wait", "3", '"oops"', *flags(names))
    assert result.returncode == 1, result  # "oops" is not a number: one failed

    url = f"http://127.0.0.1:{found.group(1)}/metrics"
    with urllib.request.urlopen(url, timeout=DEADLINE) as response:
        text = response.read().decode()
    assert 'kiwitrio_handled_total{kind="task",outcome="done"} 1.0' in text, text
    assert 'kiwitrio_handled_total{kind="task",outcome="failed"} 1.0' in text, text
    assert 'kiwitrio_handling_seconds_count{kind="task",outcome="done"} 1.0' in text, text
    assert worker.stop() == 0, worker.describe()
