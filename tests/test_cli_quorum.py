"""The CLI's --queue-type, --delivery-limit and ``worker --finished-tasks``."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path

from .conftest import Names
from .test_cli import Background, assert_clean_error, background, cli_env, flags, run

__all__ = ["background", "cli_env"]  # fixtures

QUORUM = ["--queue-type", "quorum", "--delivery-limit", "5"]


def test_a_quorum_worker_remembers_what_it_finished(
    names: Names, cli_env: dict[str, str], background: Callable[..., Background],
    tmp_path: Path,
) -> None:
    store = tmp_path / "finished.db"
    worker = background("worker", "worker", "kt_cli_tasks:square", "--finished-tasks",
                        str(store), *QUORUM, *flags(names))
    worker.wait_for("kiwitrio worker ready")
    result = run(cli_env, "send", "--json", "--wait", "4", "5", *QUORUM, *flags(names))
    assert result.returncode == 0, result
    assert sorted(result.stdout.split()) == ["16", "25"]
    # Every side must declare the queues alike: a classic sender is refused, plainly.
    assert_clean_error(run(cli_env, "send", "6", *flags(names)), 1, "x-queue-type")
    assert worker.stop(signal.SIGTERM) == 0, worker.describe()
    with contextlib.closing(sqlite3.connect(store)) as db, db:
        assert db.execute("SELECT count(*) FROM finished").fetchone()[0] == 2


def test_a_delivery_limit_needs_quorum_queues(cli_env: dict[str, str]) -> None:
    assert_clean_error(run(cli_env, "send", "--url", "memory://", "--delivery-limit", "3", "1"),
                       2, "delivery_limit needs queue_type='quorum'")
    negative = run(cli_env, "send", "--url", "memory://", "--delivery-limit", "-1", "1")
    assert negative.returncode == 2 and "--delivery-limit: must be 0 or more" in negative.stderr
