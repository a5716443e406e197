"""``kiwitrio inspect`` and ``kiwitrio control ping`` against real worker processes."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Names
from .test_cli import WAIT_TIMEOUT, Background, background, cli_env, flags, run

__all__ = ["background", "cli_env"]  # fixtures, used by name

pytestmark = pytest.mark.timeout(120)


def _wait_for_file(path: Path, *processes: Background) -> None:
    deadline = time.monotonic() + WAIT_TIMEOUT
    while not path.exists():
        assert time.monotonic() < deadline, "".join(p.describe() for p in processes)
        time.sleep(0.05)


def test_inspect_lists_a_worker_and_the_task_it_holds(
    names: Names, tmp_path: Path, cli_env: dict[str, str],
    background: Callable[..., Background],
) -> None:
    marker = tmp_path / "started"
    worker = background("worker", "worker", "kt_cli_tasks:stuck_or_done", *flags(names),
                        env={**cli_env, "KT_ROLE": "stuck", "KT_MARKER": str(marker)})
    worker.wait_for("kiwitrio worker ready")
    pid = worker.process.pid
    sender = background("send", "send", "--wait", "--timeout", "60", "job-1", *flags(names))
    _wait_for_file(marker, worker, sender)

    result = run(cli_env, "inspect", "--json", "--timeout", "2", *flags(names))
    assert result.returncode == 0, result
    entries = json.loads(result.stdout)
    # The sender is a communicator too (no subscribers); the worker holds the task.
    [entry] = [e for e in entries if e["pid"] == pid]
    assert set(entry) == {"identity", "host", "pid", "rpc_subscribers", "task_queues",
                          "in_flight"}
    assert entry["task_queues"] == [names.task_queue]
    assert entry["rpc_subscribers"] == []
    [task] = entry["in_flight"]
    assert task["queue"] == names.task_queue and task["leased"] is False
    assert task["age"] >= 0 and re.fullmatch(r"[0-9a-f]{32}", task["task_id"]), task

    text = run(cli_env, "inspect", "--timeout", "2", *flags(names))
    assert text.returncode == 0, text
    assert f" pid {pid} ({entry['identity']})" in text.stdout, text.stdout
    assert f'  task queues: "{names.task_queue}"' in text.stdout, text.stdout
    assert f'    "{names.task_queue}" {task["task_id"]} ' in text.stdout, text.stdout

    ping = run(cli_env, "control", "ping", "--id", str(pid), "--timeout", "2", *flags(names))
    assert ping.returncode == 0, ping
    assert ping.stdout == entry["identity"] + "\n"
    assert worker.stop() == 0, worker.describe()


def test_inspect_with_nobody_there_prints_an_empty_list(
        names: Names, cli_env: dict[str, str]) -> None:
    result = run(cli_env, "inspect", "--json", "--timeout", "0.5", *flags(names))
    assert result.returncode == 0, result
    assert json.loads(result.stdout) == []
    text = run(cli_env, "inspect", "--timeout", "0.5", *flags(names))
    assert text.returncode == 0 and "no communicator answered" in text.stderr, text


def test_ping_of_an_absent_id_exits_3(names: Names, cli_env: dict[str, str]) -> None:
    result = run(cli_env, "control", "ping", "--id", "nobody", "--timeout", "0.5",
                 *flags(names))
    assert result.returncode == 3, result
    assert "no communicator answered" in result.stderr and "'nobody'" in result.stderr


def test_control_shutdown_stops_a_worker_which_gives_its_task_back(
    names: Names, tmp_path: Path, cli_env: dict[str, str],
    background: Callable[..., Background],
) -> None:
    marker = tmp_path / "started"
    worker = background("worker", "worker", "kt_cli_tasks:stuck_or_done", *flags(names),
                        env={**cli_env, "KT_ROLE": "stuck", "KT_MARKER": str(marker)})
    worker.wait_for("kiwitrio worker ready")
    listener = background("listen", "listen", *flags(names))  # a plain communicator
    listener.wait_for("listening", stream="stderr")
    sender = background("send", "send", "--wait", "--timeout", "60", "job-1", *flags(names))
    _wait_for_file(marker, worker, sender)

    result = run(cli_env, "control", "shutdown", "--timeout", "2", *flags(names))
    assert result.returncode == 0, result
    assert worker.wait() == 0, worker.describe()
    assert "stopped (control shutdown): 0 tasks done, 0 failed, 1 given back" in worker.stdout()
    lines = sorted(result.stdout.splitlines())
    assert len([line for line in lines if line.endswith(": stopping")]) == 1, lines
    assert f":{worker.process.pid}:" in next(line for line in lines if "stopping" in line)
    # The listener and the sender are no workers: they say so and go on.
    assert len([line for line in lines if "ignored" in line]) == 2, lines
    assert listener.process.poll() is None, listener.describe()
    # The task went back: another worker does it.
    background("fine", "worker", "kt_cli_tasks:stuck_or_done", *flags(names),
               env={**cli_env, "KT_ROLE": "fine"})
    assert sender.wait() == 0, sender.describe()
    assert sender.stdout().strip() == '"job-1 done by fine"'


def test_control_shutdown_of_an_absent_id_exits_3(names: Names, cli_env: dict[str, str]) -> None:
    result = run(cli_env, "control", "shutdown", "--id", "1", "--timeout", "0.5",
                 *flags(names))
    assert result.returncode == 3, result
