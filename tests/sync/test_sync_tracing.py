"""Tracing through the blocking API: the calling thread's span is the parent of its sends.

The send spans only: how a sent task is processed is tests/test_tracing.py's. (A plain
subscriber here would run in a worker thread started by the portal thread, which blocks
process signals; Trio's thread cache keeps it for some seconds, and a subprocess that a later
test starts through it with trio.run_process would inherit the mask, SIGTERM blocked.)
"""

from __future__ import annotations

import pytest

import kiwitrio_sync

from ..conftest import Names

pytest.importorskip("opentelemetry.sdk")

from ..test_tracing import Traced, assert_child, traced

__all__ = ["traced"]  # a fixture, used by name


def test_a_blocking_send_is_a_child_of_the_calling_threads_span(names: Names,
                                                                 traced: Traced) -> None:
    # kiwitrio_sync's calls run in its portal thread's Trio tasks; the caller's span goes
    # along.
    kwargs = {**names.kwargs(), "task_queue": names.task_queue}
    with kiwitrio_sync.connect(f"memory://{names.prefix}", **kwargs) as comm:
        with traced.tracer.start_as_current_span("caller") as caller:
            comm.task_send(1, no_reply=True)
            comm.broadcast_send("news", subject="weather")
        comm.broadcast_send("outside any span", subject="later")
    [task] = traced.named(f"send task {names.task_queue}")
    [broadcast] = traced.named("send broadcast weather")
    assert_child(task, caller)
    assert_child(broadcast, caller)
    [later] = traced.named("send broadcast later")
    assert later.parent is None
