"""The pytest plugin (kiwitrio.testing): users' test files run with pytester, in subprocesses.

The inner runs use the plugin as installed (the ``pytest11`` entry point): its fixtures on the
real broker and in memory, async (pytest-trio) and blocking. Afterwards the names they used
must be gone from the broker, which ``rabbitmqctl list_queues`` / ``list_exchanges`` tell
(read-only; the check is skipped where rabbitmqctl cannot be used for the broker under test).

Plain ``rabbitmqctl`` talks to the machine's default node, so it is used only when the broker
under test is the one at localhost:5672. For another broker, ``KIWITRIO_TEST_RABBITMQCTL`` gives
the command that runs rabbitmqctl for it, e.g. ``bash /path/to/scripts/sid.sh rabbitmq ctl`` for
the RabbitMQ 4.3 node of scripts/sid.sh (``nox -s tests_rmq43`` sets that).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import urllib.parse

import pytest

from .conftest import AMQP_URL

pytest_plugins = ["pytester"]

pytestmark = pytest.mark.timeout(120)

#: Deadline for one inner pytest run.
INNER_TIMEOUT = 60.0

#: The environment variable through which the outer test hands its rabbitmqctl command (a JSON
#: list, empty for none) to the inner run's ``listed`` (named there too).
CTL_ENV = "KIWITRIO_TEST_LISTING_CTL"

LISTING = '''
import json
import os
import subprocess


def listed(kind):
    """Names of the broker's queues or exchanges, or None without a usable rabbitmqctl."""
    command = json.loads(os.environ.get("KIWITRIO_TEST_LISTING_CTL") or "[]")
    if not command:
        return None
    try:
        result = subprocess.run([*command, "-q", f"list_{kind}", "name"],
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return set(result.stdout.split()) if result.returncode == 0 else None
'''

USER_TESTS = '''
import json
import pathlib
import time

import trio

from listing import listed

RECORD = pathlib.Path(__file__).with_name("used-names.jsonl")


def record(names):
    with RECORD.open("a") as file:
        file.write(json.dumps({"queues": names.queues(), "exchanges": names.exchanges()}) + "\\n")


async def test_memory(kiwitrio_memory_communicator):
    comm = kiwitrio_memory_communicator
    await comm.add_task_subscriber(lambda comm, x: x * 2)
    with trio.fail_after(5):
        assert await (await comm.task_send(21)) == 42


async def test_broker(kiwitrio_communicator, kiwitrio_names):
    record(kiwitrio_names)
    comm = kiwitrio_communicator
    assert comm.server_properties["product"] == "RabbitMQ"
    queues = listed("queues")
    if queues is not None:  # the names are really used on the broker
        assert kiwitrio_names.task_queue in queues
    rpc_id = kiwitrio_names.unique("echo")
    await comm.add_rpc_subscriber(lambda comm, msg: msg.upper(), rpc_id)
    with trio.fail_after(10):
        assert await (await comm.rpc_send(rpc_id, "hi")) == "HI"


async def test_factory(kiwitrio_open, kiwitrio_names):
    jobs = kiwitrio_names.queue("jobs")
    record(kiwitrio_names)
    async with kiwitrio_open(task_queue=jobs) as worker, kiwitrio_open(task_queue=jobs) as client:
        await worker.add_task_subscriber(lambda comm, x: -x)
        with trio.fail_after(10):
            assert await (await client.task_send(5)) == -5


async def test_failing_still_cleans_up(kiwitrio_communicator, kiwitrio_names):
    record(kiwitrio_names)
    await kiwitrio_communicator.task_send("left in the queue", no_reply=True)
    assert False, "this test fails on purpose"


def test_sync(kiwitrio_sync_communicator, kiwitrio_names):
    record(kiwitrio_names)
    comm = kiwitrio_sync_communicator
    comm.add_task_subscriber(lambda comm, x: x + 1)
    assert comm.task_send(1).result(timeout=10) == 2


def test_sync_factory(kiwitrio_sync_connect, kiwitrio_names):
    record(kiwitrio_names)
    listener, sender = kiwitrio_sync_connect(), kiwitrio_sync_connect()
    got = []
    listener.add_broadcast_subscriber(lambda comm, body, sender, subject, cid: got.append(body))
    sender.broadcast_send("hello", subject="greeting")
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        time.sleep(0.02)
    assert got == ["hello"]
'''

# No pytest-trio at all, and a broker URL that cannot be reached: tests that use the plugin
# only in memory (or only for names) must neither need pytest-trio nor touch the broker.
NO_TRIO_TESTS = '''
import trio

import kiwitrio


def test_sync_memory(kiwitrio_sync_connect):
    comm = kiwitrio_sync_connect(url="memory://no-trio")
    comm.add_task_subscriber(lambda comm, x: x * 3)
    assert comm.task_send(3).result(timeout=10) == 9


def test_names_in_memory(kiwitrio_names):
    # kwargs() cannot tell where the names go: the clean-up tries the (unreachable) broker.
    async def main():
        async with kiwitrio.open_communicator("memory://", **kiwitrio_names.kwargs()) as comm:
            await comm.add_task_subscriber(lambda comm, x: x - 1)
            with trio.fail_after(5):
                assert await (await comm.task_send(1)) == 0

    trio.run(main)
    assert kiwitrio_names.prefix.startswith("kt-test_names_in_memory-")
'''

# pytest-trio without trio mode: @pytest.mark.trio on the test is enough.
MARKED_TESTS = '''
import pytest
import trio


@pytest.mark.trio
async def test_marked(kiwitrio_memory_communicator):
    comm = kiwitrio_memory_communicator
    got = trio.Event()

    async def on_broadcast(comm, body, sender, subject, correlation_id):
        got.set()

    await comm.add_broadcast_subscriber(on_broadcast)
    await comm.broadcast_send("hi")
    with trio.fail_after(5):
        await got.wait()
'''


def _rabbitmqctl() -> list[str]:
    """The command that runs rabbitmqctl for the broker under test; empty if there is none."""
    configured = os.environ.get("KIWITRIO_TEST_RABBITMQCTL", "").strip()
    if configured:
        return shlex.split(configured)
    parts = urllib.parse.urlsplit(AMQP_URL)
    if (parts.hostname not in ("127.0.0.1", "localhost", "::1") or (parts.port or 5672) != 5672
            or shutil.which("rabbitmqctl") is None):
        return []
    return ["rabbitmqctl"]


def _listed(kind: str) -> set[str] | None:
    """The broker's queue or exchange names through rabbitmqctl, or None if unusable."""
    command = _rabbitmqctl()
    if not command:
        return None
    try:
        result = subprocess.run([*command, "-q", f"list_{kind}", "name"],
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return set(result.stdout.split()) if result.returncode == 0 else None


def test_user_tests_with_the_fixtures_pass_and_clean_up(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CTL_ENV, json.dumps(_rabbitmqctl()))
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    pytester.makepyfile(listing=LISTING, test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--kiwitrio-url",
                                           AMQP_URL, timeout=INNER_TIMEOUT)
    result.assert_outcomes(passed=5, failed=1)
    result.stdout.fnmatch_lines(["*this test fails on purpose*"])

    records = [json.loads(line) for line in
               (pytester.path / "used-names.jsonl").read_text().splitlines()]
    assert len(records) == 5
    queues = {q for record in records for q in record["queues"]}
    queues |= {f"{q}.dead-letter" for q in queues}
    exchanges = {x for record in records for x in record["exchanges"]}
    assert any(q.endswith(".jobs") for q in queues)

    listed_queues, listed_exchanges = _listed("queues"), _listed("exchanges")
    if listed_queues is None or listed_exchanges is None:
        pytest.skip("rabbitmqctl is not usable here: the clean-up was not checked")
    assert not queues & listed_queues
    assert not exchanges & listed_exchanges


def test_without_pytest_trio_and_without_broker(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_no_trio=NO_TRIO_TESTS)
    result = pytester.runpytest_subprocess(
        "-p", "no:trio", "-p", "no:cacheprovider",
        "--kiwitrio-url", "amqp://guest:guest@127.0.0.1:1/", timeout=INNER_TIMEOUT,
    )
    result.assert_outcomes(passed=2)


def test_marked_trio_test_without_trio_mode(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_marked=MARKED_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=INNER_TIMEOUT)
    result.assert_outcomes(passed=1)
