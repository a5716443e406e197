"""The ``kiwitrio`` command line, run as subprocesses (``python -m kiwitrio``) on the real broker.

Every process gets this test's unique names (``--message-exchange``... and the
``--testing`` flag), and a deadline. Background processes (workers, listeners) write to files
that the tests poll, with a deadline, for the line they wait for.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

import kiwitrio

from .conftest import AMQP_URL, Names

pytestmark = pytest.mark.timeout(120)

CLI = [sys.executable, "-m", "kiwitrio"]
#: Deadline for one command (start Python, connect, do it).
RUN_TIMEOUT = 30.0
#: Deadline for a background process to print what we wait for.
WAIT_TIMEOUT = 20.0
UNREACHABLE_URL = "amqp://guest:guest@127.0.0.1:1/"

TASKS_MODULE = '''
import os
import pathlib

import trio


def square(comm, task):
    """A plain function: runs in a thread."""
    if not isinstance(task, int):
        raise ValueError(f"not a number: {task!r}")
    return task * task


def unencodable(comm, task):
    """A result CBOR cannot encode for the task "bad"."""
    return object() if task == "bad" else task


async def stuck_or_done(comm, task):
    """With KT_ROLE=stuck: say so in KT_MARKER and never finish. Else: answer."""
    if os.environ.get("KT_ROLE") == "stuck":
        pathlib.Path(os.environ["KT_MARKER"]).write_text(str(task))
        await trio.sleep_forever()
    return f"{task} done by {os.environ.get('KT_ROLE')}"


async def last_first(comm, task):
    """Tasks 1..KT_LAST, all at once: each finishes after the one after it (so the results
    come back last first); 2 raises."""
    here = pathlib.Path(os.environ["KT_DIR"])
    if task < int(os.environ["KT_LAST"]):
        while not (here / f"done-{task + 1}").exists():
            await trio.sleep(0.02)
    (here / f"done-{task}").write_text("")
    if task == 2:
        raise ValueError("two is right out")
    return task * task
'''


def flags(names: Names) -> list[str]:
    """This test's names as command line options, in testing mode."""
    return ["--url", AMQP_URL, "--message-exchange", names.message_exchange,
            "--task-exchange", names.task_exchange, "--task-queue", names.task_queue,
            "--testing"]


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """The environment: tmp_path (with the tasks module) on PYTHONPATH."""
    (tmp_path / "kt_cli_tasks.py").write_text(TASKS_MODULE)
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    env.pop("KIWITRIO_URL", None)
    return env


def run(env: dict[str, str], *args: str, stdin: str | None = None,
        timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=env, input=stdin, capture_output=True, text=True,
                          timeout=timeout, stdin=None if stdin is not None else subprocess.DEVNULL)


class Background:
    """A CLI process running on its own; stdout and stderr go to files."""

    def __init__(self, tmp_path: Path, name: str, env: dict[str, str], args: list[str]):
        self.name = name
        self.stdout_path = tmp_path / f"{name}.stdout"
        self.stderr_path = tmp_path / f"{name}.stderr"
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            self.process = subprocess.Popen([*CLI, *args], env=env, stdout=out, stderr=err,
                                            stdin=subprocess.DEVNULL)

    def stdout(self) -> str:
        return self.stdout_path.read_text()

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def describe(self) -> str:
        return (f"{self.name} (returncode {self.process.poll()})\nstdout:\n{self.stdout()}\n"
                f"stderr:\n{self.stderr()[-3000:]}")

    def wait_for(self, text: str, *, stream: str = "stdout",
                 timeout: float = WAIT_TIMEOUT) -> None:
        """Return once ``text`` is in the output; fail at the deadline or if the process ends."""
        read = self.stdout if stream == "stdout" else self.stderr
        deadline = time.monotonic() + timeout
        while text not in read():
            if self.process.poll() is not None and text not in read():
                pytest.fail(f"{self.name} ended before printing {text!r}: {self.describe()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{self.name} did not print {text!r} in {timeout}s: "
                            f"{self.describe()}")
            time.sleep(0.05)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = WAIT_TIMEOUT) -> int:
        self.process.send_signal(signum)
        return self.wait(timeout)

    def wait(self, timeout: float = WAIT_TIMEOUT) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name} did not exit in {timeout}s: {self.describe()}")


@pytest.fixture
def background(tmp_path: Path, cli_env: dict[str, str]) -> Iterator[Callable[..., Background]]:
    """``background(name, *args)`` starts a CLI process; all are killed after the test."""
    started: list[Background] = []

    def start(name: str, *args: str, env: dict[str, str] | None = None) -> Background:
        process = Background(tmp_path, name, env or cli_env, list(args))
        started.append(process)
        return process

    yield start
    for process in started:
        if process.process.poll() is None:
            process.process.kill()
            process.process.wait(10)


def assert_clean_error(result: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    """Exit ``code``, one ``kiwitrio: error:`` line mentioning ``words``, no traceback."""
    assert result.returncode == code, result
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("kiwitrio: error:")]
    assert len(errors) == 1, result.stderr
    for word in words:
        assert word in errors[0], result.stderr


def test_help_documents_the_exit_codes(cli_env: dict[str, str]) -> None:
    result = run(cli_env, "--help")
    assert result.returncode == 0
    for command in ("worker", "send", "rpc", "broadcast", "listen", "status", "demo", "bench"):
        assert command in result.stdout
    assert "exit codes:" in result.stdout
    assert re.search(r"^\s+130\s+interrupted", result.stdout, re.MULTILINE), result.stdout


def test_worker_and_send_round_trip_then_sigterm(
    names: Names, cli_env: dict[str, str], background: Callable[..., Background],
) -> None:
    worker = background("worker", "worker", "kt_cli_tasks:square", "--concurrency", "2",
                        *flags(names))
    worker.wait_for("kiwitrio worker ready")

    result = run(cli_env, "send", "--json", "--wait", "1", "2", "3", *flags(names))
    assert result.returncode == 0, result
    assert sorted(result.stdout.split()) == ["1", "4", "9"]

    # From stdin, as strings (no --json): the worker raises, the exit code is 1.
    result = run(cli_env, "send", "--wait", *flags(names), stdin="oops\n\n")
    assert result.returncode == 1, result
    assert "ValueError: not a number: 'oops'" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""

    assert worker.stop(signal.SIGTERM) == 0, worker.describe()
    assert "kiwitrio worker stopped (SIGTERM): 3 tasks done, 1 failed\n" in worker.stdout()
    assert "Traceback" not in worker.stderr()
    # The failure, once, as a warning naming the task and the exception.
    failures = [line for line in worker.stderr().splitlines() if "failed" in line]
    assert len(failures) == 1, worker.describe()
    assert "WARNING" in failures[0] and "('oops')" in failures[0], worker.describe()
    assert "ValueError: not a number: 'oops'" in failures[0], worker.describe()


def test_worker_counts_an_unencodable_result_as_failed_and_shows_tracebacks_under_v(
    names: Names, cli_env: dict[str, str], background: Callable[..., Background],
) -> None:
    worker = background("worker", "-v", "worker", "kt_cli_tasks:unencodable", *flags(names))
    worker.wait_for("kiwitrio worker ready")
    result = run(cli_env, "send", "--wait", "bad", "fine", *flags(names))
    assert result.returncode == 1, result
    assert "cannot be encoded" in result.stderr, result.stderr
    assert result.stdout.split() == ['"fine"'], result
    assert worker.stop(signal.SIGTERM) == 0, worker.describe()
    assert "stopped (SIGTERM): 1 task done, 1 failed\n" in worker.stdout(), worker.describe()
    stderr = worker.stderr()
    assert "Traceback" in stderr, worker.describe()  # -v: the traceback too
    # Log lines (not the traceback's) about it: the worker's warning, not also the core's.
    about_it = [line for line in stderr.splitlines()
                if re.match(r"\S+ \S+ [A-Z]+ kiwitrio", line) and "cannot be encoded" in line]
    assert len(about_it) == 1, worker.describe()
    assert "WARNING" in about_it[0] and "('bad')" in about_it[0], worker.describe()


def test_worker_stopped_mid_task_gives_it_back(
    names: Names, tmp_path: Path, cli_env: dict[str, str],
    background: Callable[..., Background],
) -> None:
    marker = tmp_path / "started"
    stuck = background("stuck", "worker", "kt_cli_tasks:stuck_or_done", *flags(names),
                       env={**cli_env, "KT_ROLE": "stuck", "KT_MARKER": str(marker)})
    stuck.wait_for("kiwitrio worker ready")
    sender = background("send", "send", "--wait", "--timeout", "30", "job-1", *flags(names))

    deadline = time.monotonic() + WAIT_TIMEOUT
    while not marker.exists():
        assert time.monotonic() < deadline, stuck.describe() + sender.describe()
        time.sleep(0.05)
    assert stuck.stop(signal.SIGINT) == 0, stuck.describe()
    assert "stopped (SIGINT): 0 tasks done, 0 failed, 1 given back" in stuck.stdout()

    # The unfinished task went back to the queue: another worker does it.
    fine = background("fine", "worker", "kt_cli_tasks:stuck_or_done", *flags(names),
                      env={**cli_env, "KT_ROLE": "fine"})
    assert sender.wait() == 0, sender.describe()
    assert sender.stdout().strip() == '"job-1 done by fine"'
    assert fine.stop(signal.SIGTERM) == 0, fine.describe()
    assert "1 task done, 0 failed" in fine.stdout()


@pytest.mark.parametrize("spec, words", [
    ("kt_no_such_module:fn", ["kt_no_such_module"]),
    ("kt_cli_tasks:nope", ["no attribute", "nope"]),
    ("kt_cli_tasks", ["MODULE:FUNCTION"]),
])
def test_worker_with_a_bad_function_is_a_usage_error(
    cli_env: dict[str, str], spec: str, words: list[str],
) -> None:
    # Checked before connecting: no broker needed.
    result = run(cli_env, "worker", spec, "--url", UNREACHABLE_URL)
    assert_clean_error(result, 2, *words)


def test_bad_json_is_a_usage_error(cli_env: dict[str, str]) -> None:
    result = run(cli_env, "send", "--json", "1", "{oops", "--url", UNREACHABLE_URL)
    assert_clean_error(result, 2, "task 2", "JSON")


def test_rpc_to_nobody_exits_3(names: Names, cli_env: dict[str, str]) -> None:
    result = run(cli_env, "rpc", f"{names.prefix}.nobody", "hello?", *flags(names))
    assert_clean_error(result, 3, f"{names.prefix}.nobody")


def test_unreachable_broker_exits_4_without_traceback(cli_env: dict[str, str]) -> None:
    result = run(cli_env, "send", "hello", "--url", UNREACHABLE_URL, "--connect-timeout", "0")
    assert_clean_error(result, 4, "127.0.0.1:1")
    assert "guest:guest" not in result.stderr  # the password is not shown

    # -v: the traceback as well.
    result = run(cli_env, "-v", "send", "hello", "--url", UNREACHABLE_URL,
                 "--connect-timeout", "0")
    assert result.returncode == 4
    assert "Traceback" in result.stderr
    assert "ConnectionFailed" in result.stderr


def test_a_wrong_password_exits_1_at_once_in_one_line(cli_env: dict[str, str]) -> None:
    # A long --connect-timeout: a refusal must not be retried until it runs out.
    wrong = AMQP_URL.replace("guest:guest@", "guest:not-the-password@")
    result = run(cli_env, "-v", "status", "--url", wrong, "--connect-timeout", "600")
    assert result.returncode == 1, result
    assert "failed (attempt" not in result.stderr  # one attempt
    result = run(cli_env, "status", "--url", wrong, "--connect-timeout", "600")
    broker = urllib.parse.urlsplit(AMQP_URL).netloc.rpartition("@")[2]  # host:port
    assert_clean_error(result, 1, "check the user name and password", broker)
    assert "not-the-password" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_missing_vhost_exits_1_saying_how_to_make_it(names: Names,
                                                      cli_env: dict[str, str]) -> None:
    vhost = f"{names.prefix}-no-such-vhost"
    result = run(cli_env, "send", "x", "--url", f"{AMQP_URL}{vhost}", "--connect-timeout", "600")
    assert_clean_error(result, 1, f"rabbitmqctl add_vhost {vhost}")
    assert "Expected one of" not in result.stderr


@pytest.mark.parametrize(("args", "words"), [
    (["send", "x", "--url", "amqp://h:notaport/"], ["bad broker URL", "notaport"]),
    (["broadcast", "--subject", "s" * 256, "body"], ["--subject", "255 bytes"]),
    (["listen", "--subject", "s" * 256, "--count", "1"], ["--subject", "255 bytes"]),
    (["broadcast", "--sender", "s" * 1025, "body"], ["sender", "1024"]),  # found connected
], ids=["url-port", "subject", "listen-subject", "sender"])
def test_values_kiwitrio_refuses_are_usage_errors(names: Names, cli_env: dict[str, str],
                                                  args: list[str], words: list[str]) -> None:
    result = run(cli_env, *flags(names), *args)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr and "unexpected" not in result.stderr, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def test_testing_on_one_side_only_is_explained(names: Names, cli_env: dict[str, str]) -> None:
    assert "--testing" in run(cli_env, "--help").stdout
    without_testing = [arg for arg in flags(names) if arg != "--testing"]
    # The exchanges made here without --testing are durable; the names fixture deletes them.
    assert run(cli_env, "broadcast", "first", *without_testing).returncode == 0
    result = run(cli_env, "broadcast", "second", *flags(names))
    assert_clean_error(result, 1, "DeclarationMismatch", "'auto_delete'",
                       "use the same testing_mode", "--testing")


def test_send_ordered_with_task_prints_inputs_with_results_in_input_order(
    names: Names, tmp_path: Path, cli_env: dict[str, str],
    background: Callable[..., Background],
) -> None:
    env = {**cli_env, "KT_DIR": str(tmp_path), "KT_LAST": "4"}
    worker = background("worker", "worker", "kt_cli_tasks:last_first", "--concurrency", "4",
                        *flags(names), env=env)
    worker.wait_for("kiwitrio worker ready")
    result = run(cli_env, "send", "--json", "--wait", "--ordered", "--with-task",
                 *flags(names), stdin="1\n2\n3\n4\n")
    assert result.returncode == 1, result
    assert result.stdout.splitlines() == [
        '{"task": 1, "result": 1}',
        '{"task": 2, "error": {"type": "ValueError", "message": "two is right out"}}',
        '{"task": 3, "result": 9}',
        '{"task": 4, "result": 16}',
    ], result
    assert "kiwitrio: task 2 failed: ValueError: two is right out" in result.stderr, result


@pytest.mark.parametrize("flag", ["--ordered", "--with-task"])
def test_send_ordered_and_with_task_need_wait(cli_env: dict[str, str], flag: str) -> None:
    result = run(cli_env, "send", flag, "1", "--url", UNREACHABLE_URL)
    assert result.returncode == 2, result
    assert f"{flag} need --wait" in result.stderr, result


def test_send_reports_follow_the_tasks_with_ordered_only() -> None:
    from kiwitrio._cli._messages import _InOrder

    for ordered, expected in ((True, [1, 2, 3]), (False, [3, 1, 2])):
        ran: list[int] = []
        reports = _InOrder(ordered)
        for index in (3, 1, 2):
            reports.put(index, functools.partial(ran.append, index))
        assert ran == expected


def test_send_wait_times_out_with_exit_5(names: Names, cli_env: dict[str, str]) -> None:
    result = run(cli_env, "send", "--wait", "--timeout", "1", "nobody works", *flags(names))
    assert_clean_error(result, 5, "timed out", "0 of 1")


def test_listen_and_broadcast(
    names: Names, cli_env: dict[str, str], background: Callable[..., Background],
) -> None:
    listener = background("listen", "listen", "--subject", "jobs.*", "--count", "2",
                          "--timeout", "30", *flags(names))
    listener.wait_for("kiwitrio: listening", stream="stderr")

    for body, subject in [('"filtered out"', "other.topic"), ('{"pk": 1}', "jobs.done"),
                          ("[2]", "jobs.failed")]:
        result = run(cli_env, "broadcast", body, "--json", "--subject", subject,
                     "--sender", "cli-test", *flags(names))
        assert result.returncode == 0, result

    assert listener.wait() == 0, listener.describe()
    assert listener.stdout().splitlines() == [
        '{"body": {"pk": 1}, "sender": "cli-test", "subject": "jobs.done", '
        '"correlation_id": null}',
        '{"body": [2], "sender": "cli-test", "subject": "jobs.failed", "correlation_id": null}',
    ]


def test_status_prints_the_broker_version(names: Names, cli_env: dict[str, str]) -> None:
    result = run(cli_env, "status", *flags(names))
    assert result.returncode == 0, result
    assert re.search(r"^server: RabbitMQ \d+\.\d+", result.stdout, re.MULTILINE), result.stdout
    # Nothing declared these names yet: status says so instead of inventing counts.
    assert f"task queues (1):\n  {names.task_queue}: does not exist\n" in result.stdout


def test_status_shows_queue_depth_and_consumers(names: Names,
                                                cli_env: dict[str, str]) -> None:
    async def two_waiting_tasks() -> None:
        async with kiwitrio.open_communicator(AMQP_URL, **names.kwargs()) as comm:
            await comm.task_send("a", no_reply=True)
            await comm.task_send("b", no_reply=True)

    trio.run(two_waiting_tasks)
    result = run(cli_env, "status", *flags(names))
    assert result.returncode == 0, result
    assert f"  {names.task_queue}: 2 waiting, 0 consumers, 0 dead letters\n" in result.stdout


def test_status_of_an_unreachable_broker_exits_4(cli_env: dict[str, str]) -> None:
    result = run(cli_env, "status", "--url", UNREACHABLE_URL)
    assert_clean_error(result, 4)


def test_demo_runs_end_to_end(cli_env: dict[str, str]) -> None:
    # examples/demo.py with names of its own (kiwitrio-demo-<random>), cleaned up after.
    result = run(cli_env, "demo", "--url", AMQP_URL, "--workers", "2", "--tasks", "6",
                 timeout=120)
    assert result.returncode == 0, result
    assert "demo passed" in result.stdout, result.stdout
    assert "[ok] tasks: 6/6 correct results from 2 workers" in result.stdout, result.stdout


def test_bench_quick_run_writes_its_report(cli_env: dict[str, str], tmp_path: Path) -> None:
    # One implementation and one workload: the machinery, not the figures.
    result = run(cli_env, "bench", "--url", AMQP_URL, "--quick", "--impl", "kiwitrio",
                 "--workload", "rpc", "--no-plot", "--results", str(tmp_path), timeout=180)
    assert result.returncode == 0, result
    report = (tmp_path / "latest.md").read_text()
    assert "(d) RPC latency, median" in report
    assert (tmp_path / "latest.json").is_file()
