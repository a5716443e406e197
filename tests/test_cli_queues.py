"""``kiwitrio status``, ``purge`` and ``delete`` through the real entry point."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import trio

import kiwitrio

from .conftest import AMQP_URL, Names
from .test_cli import Background, background, cli_env, flags, run

__all__ = ["background", "cli_env"]  # fixtures, used by name

pytestmark = pytest.mark.timeout(120)


def _send(names: Names, queue: str, count: int) -> None:
    async def send() -> None:
        async with kiwitrio.open_communicator(AMQP_URL, **names.kwargs()) as comm:
            target = await comm.task_queue(queue)
            for task in range(count):
                await target.task_send(task, no_reply=True)

    trio.run(send)


def test_status_lists_every_task_queue_as_text_and_json(names: Names,
                                                        cli_env: dict[str, str]) -> None:
    other = names.queue("other")
    _send(names, other, 3)
    text = run(cli_env, "status", *flags(names))
    assert text.returncode == 0, text
    assert (f"task queues (2):\n  {names.task_queue}: 0 waiting, 0 consumers, 0 dead letters\n"
            f"  {other}: 3 waiting, 0 consumers, 0 dead letters\n") in text.stdout, text.stdout
    as_json = run(cli_env, "status", "--json", *flags(names))
    assert as_json.returncode == 0, as_json
    assert json.loads(as_json.stdout)[1] == {
        "queue": other, "exists": True, "waiting": 3, "consumers": 0,
        "dead_letter_queue": f"{other}.dead-letter", "dead_letters": 0}


def test_purge_and_delete_refuse_a_queue_in_use_unless_forced(
        names: Names, cli_env: dict[str, str], background: Callable[..., Background]) -> None:
    _send(names, names.task_queue, 0)
    worker = background("worker", "worker", "kt_cli_tasks:square", *flags(names))
    worker.wait_for("kiwitrio worker ready")
    for command in ("purge", "delete"):
        refused = run(cli_env, command, names.task_queue, *flags(names))
        assert refused.returncode == 1, refused
        assert f"the queue '{names.task_queue}' has 1 consumer: not going to {command} it" \
            in refused.stderr, refused
    assert "0 waiting, 1 consumer," in run(cli_env, "status", *flags(names)).stdout
    forced = run(cli_env, "purge", "--force", names.task_queue, *flags(names))
    assert forced.stdout == f"{names.task_queue}: 0 messages removed\n", forced
    assert worker.stop() == 0, worker.describe()


def test_delete_removes_a_task_queue_its_dead_letters_and_its_listing(
        names: Names, cli_env: dict[str, str]) -> None:
    doomed = names.queue("doomed")
    _send(names, doomed, 2)
    result = run(cli_env, "delete", doomed, *flags(names))
    assert result.returncode == 0, result
    assert result.stdout == (f"{doomed}: deleted (2 messages)\n"
                             f"{doomed}.dead-letter: deleted (0 messages)\n")
    assert doomed not in run(cli_env, "status", *flags(names)).stdout
    again = run(cli_env, "delete", doomed, *flags(names))
    assert (again.returncode, again.stdout) == (0, f"{doomed}: does not exist\n"), again


def test_delete_exchange_refuses_one_with_bindings(names: Names,
                                                   cli_env: dict[str, str]) -> None:
    _send(names, names.task_queue, 0)
    refused = run(cli_env, "delete", "--exchange", names.task_exchange, *flags(names))
    assert refused.returncode == 1, refused
    assert "has queues bound to it" in refused.stderr, refused
    purge_missing = run(cli_env, "purge", names.unique("missing"), *flags(names))
    assert purge_missing.returncode == 1 and "there is no queue" in purge_missing.stderr
