"""Scenario 6: bad input on every queue, with a normal workload running alongside.

Raw messages (published with ``comm._ctx.session.publish`` and ``OutgoingMessage``, so that
nothing in kiwitrio's sending path can refuse them) go to a task queue, an RPC queue, the
broadcast exchange and a reply queue of an in-process communicator (the *target*, opened with
``max_message_size=1024``): garbage bytes, a wrong structure (a CBOR list where a broadcast or
reply envelope is expected), an oversized body and an unknown content type. Garbage and an
unknown content type also go to the workload's own task queue, which worker processes consume.

Promised: each bad message is rejected visibly (an ERROR log line; task queues dead-letter it
to ``<queue>.dead-letter``, intact; a waiting result handle fails with DecodeError), nothing
is redelivered forever, the communicators stay up, and the workload loses nothing and runs
nothing twice.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from typing import Any

import pytest
import trio

import kiwitrio
from kiwitrio._backends import OutgoingMessage

from ..conftest import AMQP_URL, Names
from .workload import (
    Figures,
    TaskBook,
    WorkerFleet,
    executed_twice,
    open_senders,
    report,
    traffic_alongside,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(150)]

N_TASKS = 1000
N_WORKERS = 2
N_SENDERS = 2
PREFETCH = 4
TASK_SECONDS = 0.005
MAX_MESSAGE_SIZE = 1024
DEADLINE = 20.0
RESULTS_DEADLINE = 60.0

CBOR = kiwitrio.CBOR_CONTENT_TYPE
GARBAGE = b"\xff\xfe\x00 not CBOR at all \x1f"
UNKNOWN_TYPE = "text/x-unknown"
WRONG_STRUCTURE = kiwitrio.cbor_encode([1, 2, 3])


def oversized(value: dict[str, Any]) -> bytes:
    """A well-formed CBOR body a little over the target's max_message_size."""
    body = kiwitrio.cbor_encode({**value, "pad": "x" * (2 * MAX_MESSAGE_SIZE)})
    assert len(body) > MAX_MESSAGE_SIZE
    return body


async def publish_raw(comm: kiwitrio.Communicator, exchange: str, routing_key: str,
                      body: bytes, content_type: str = CBOR, *, mandatory: bool = True,
                      correlation_id: str | None = None, reply_to: str | None = None) -> None:
    message = OutgoingMessage(body, content_type, correlation_id=correlation_id,
                              reply_to=reply_to, persistent=True)
    await comm._ctx.session.publish(exchange, routing_key, message, mandatory=mandatory)


async def drain_dead_letters(comm: kiwitrio.Communicator, queue: str,
                             count: int) -> list[tuple[bytes, str | None]]:
    """Take ``count`` messages (body, content type) from ``queue``'s dead-letter queue."""
    found: list[tuple[bytes, str | None]] = []
    with trio.fail_after(DEADLINE):
        while len(found) < count:
            delivery = await comm._ctx.session.get(f"{queue}.dead-letter")
            if delivery is None:
                await trio.sleep(0.05)
                continue
            found.append((delivery.body, delivery.content_type))
            await delivery.ack()
    # Nothing more than expected was dead-lettered.
    extra = await comm._ctx.session.get(f"{queue}.dead-letter")
    assert extra is None, (extra.body, extra.content_type)
    return found


def error_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def wait_for_errors(caplog: pytest.LogCaptureFixture,
                          expected: dict[str, int]) -> dict[str, int]:
    """Poll the log until each substring has been in as many ERROR lines as expected."""

    def counts() -> dict[str, int]:
        lines = error_lines(caplog)
        return {text: sum(1 for line in lines if text in line) for text in expected}

    try:
        with trio.fail_after(DEADLINE):
            # caplog has no wake-up: poll it (with the deadline above).
            while any(counts()[text] < n for text, n in expected.items()):  # noqa: ASYNC110
                await trio.sleep(0.05)
    except trio.TooSlowError:
        raise AssertionError(f"expected ERROR lines {expected}, got {counts()}: "
                             f"{error_lines(caplog)[-20:]}") from None
    return counts()


async def test_bad_input_on_every_queue_is_rejected_visibly(
    names: Names, fleet: WorkerFleet, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    began = time.monotonic()
    book = TaskBook()
    target_id = f"{names.prefix}.target"
    target_queue_name = f"{names.prefix}.target-tasks"
    fleet.shared_broker_queues.add(target_queue_name)
    target_states: list[kiwitrio.ConnectionState] = []
    target_tasks: list[Any] = []
    target_broadcasts: list[Any] = []

    async def target_task(_comm: Any, task: Any) -> Any:
        target_tasks.append(task)
        return {"ok": task["id"]}  # a list (wrong structure) makes this raise

    after_came = trio.Event()

    async def target_broadcast(_comm: Any, body: Any, *_rest: Any) -> None:
        target_broadcasts.append(body)
        if body == {"seq": "after"}:
            after_came.set()

    workers = await fleet.spawn_many(N_WORKERS, AMQP_URL, prefetch=PREFETCH,
                                     reconnect_fast=False)
    async with open_senders(AMQP_URL, names, N_SENDERS, fleet) as senders, \
            open_senders(AMQP_URL, names, 1, fleet, on_connection_state=target_states.append,
                         max_message_size=MAX_MESSAGE_SIZE) as (target,), \
            traffic_alongside(senders[0], fleet) as (rpc, broadcasts):
        attacker = senders[1]
        target_queue = await target.task_queue(target_queue_name)
        await target_queue.add_task_subscriber(target_task)
        await target.add_rpc_subscriber(lambda _c, msg: {"echo": msg}, target_id)
        await target.add_broadcast_subscriber(
            kiwitrio.BroadcastFilter(target_broadcast, subject="faults.*"))
        # Handles waiting on the target's reply queue, and one on the attacker's: each will
        # get a bad reply.
        pending = [await target._replies.expect() for _ in range(4)]
        reply_queue, waiting = pending[0][0], [handle for _, handle in pending]
        attacker_reply_queue, rpc_waiting = await attacker._replies.expect()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(book.send_all, senders, range(N_TASKS),
                                                 lambda i: {"id": i, "sleep": TASK_SECONDS}))
            with trio.fail_after(30):
                await book.wait_resolved(N_TASKS // 10)  # the workload is under way

            task_exchange, message_exchange = names.task_exchange, names.message_exchange
            # -- a task queue the target consumes
            target_dead = [(GARBAGE, CBOR), (kiwitrio.cbor_encode({"id": -1}), UNKNOWN_TYPE),
                           (oversized({"id": -2}), CBOR)]
            for body, content_type in target_dead:
                await publish_raw(attacker, task_exchange, target_queue_name, body,
                                  content_type)
            # A CBOR list is a valid task: the subscriber gets it, raises, and that is that.
            await publish_raw(attacker, task_exchange, target_queue_name, WRONG_STRUCTURE)
            # -- the workload's task queue, which the worker processes consume
            workload_dead = [(GARBAGE, CBOR), (kiwitrio.cbor_encode({"id": -3}), UNKNOWN_TYPE)]
            for body, content_type in workload_dead:
                await publish_raw(attacker, task_exchange, names.task_queue, body,
                                  content_type)
            # -- the target's RPC queue (an undecodable RPC asking for a reply, whose error
            # reply is over the target's small max_message_size, is the test below)
            rpc_queue = f"{message_exchange}.rpc.{target_id}"
            await publish_raw(attacker, "", rpc_queue, GARBAGE)
            await publish_raw(attacker, "", rpc_queue, kiwitrio.cbor_encode("hi"),
                              UNKNOWN_TYPE)
            await publish_raw(attacker, "", rpc_queue, oversized({"rpc": 1}))
            bad_rpcs = 3
            # -- a worker process's RPC queue: garbage asking for a reply gets an error reply
            assert workers[0].rpc_id is not None
            await publish_raw(attacker, "", f"{message_exchange}.rpc.{workers[0].rpc_id}",
                              GARBAGE, reply_to=attacker_reply_queue,
                              correlation_id=rpc_waiting.correlation_id)
            # -- the broadcast exchange (the workers subscribe to faults.* as well)
            envelope = {"body": {"seq": -1}, "sender": "attacker", "subject": "faults.tick",
                        "correlation_id": None}
            bad_broadcasts = [(GARBAGE, CBOR), (WRONG_STRUCTURE, CBOR),
                              (kiwitrio.cbor_encode(envelope), UNKNOWN_TYPE),
                              (oversized(envelope), CBOR)]
            for body, content_type in bad_broadcasts:
                await publish_raw(attacker, message_exchange, "faults.tick", body,
                                  content_type, mandatory=False)
            # -- the target's reply queue, each for a waiting handle
            bad_replies = [(GARBAGE, CBOR), (WRONG_STRUCTURE, CBOR),
                           (kiwitrio.cbor_encode({"result": 1}), UNKNOWN_TYPE),
                           (oversized({"result": 1}), CBOR)]
            for handle, (body, content_type) in zip(waiting, bad_replies, strict=True):
                await publish_raw(attacker, "", reply_queue, body, content_type,
                                  correlation_id=handle.correlation_id)

            errors = await wait_for_errors(caplog, {
                f"rejecting task on {target_queue_name!r}": len(target_dead),
                f"rejecting RPC to {target_id!r}": bad_rpcs,
                "rejecting broadcast": len(bad_broadcasts),
                "rejecting reply": len(bad_replies),
            })
            with trio.fail_after(DEADLINE):
                for handle in waiting[:len(bad_replies)]:
                    with pytest.raises(kiwitrio.DecodeError):
                        await handle
                with pytest.raises(kiwitrio.RemoteException) as garbage_rpc:
                    await rpc_waiting
            dead_target = await drain_dead_letters(attacker, target_queue_name,
                                                   len(target_dead))
            dead_workload = await drain_dead_letters(attacker, names.task_queue,
                                                     len(workload_dead))

            # The target is still up and working: a task, an RPC and a broadcast.
            with trio.fail_after(DEADLINE):
                sending_queue = await attacker.task_queue(target_queue_name)
                assert await (await sending_queue.task_send({"id": 7})) == {"ok": 7}
                assert await (await attacker.rpc_send(target_id, "still there?")) == {
                    "echo": "still there?"}
                await attacker.broadcast_send({"seq": "after"}, subject="faults.after")
                await after_came.wait()
            # The wrong-structure task was taken once, not redelivered: the queue is empty.
            assert await attacker._ctx.session.get(target_queue_name) is None
            target_state = target.connection_state
        await book.wait_all(RESULTS_DEADLINE)
    returncodes = await fleet.stop_all()

    completed, problems = book.check(fleet.pids)
    completions = fleet.completions()
    worker_errors = {w.name: w.stderr() for w in workers}
    rejected_by_workers = sum(text.count("rejecting task") for text in worker_errors.values())
    figures = Figures(
        "bad-input", sent=book.sent, completed=completed, lost=book.sent - completed,
        executed_twice=executed_twice(completions),
        extra={
            "bad_messages": (len(target_dead) + 1 + len(workload_dead) + bad_rpcs + 1
                             + len(bad_broadcasts) + len(bad_replies)),
            "dead_lettered": len(dead_target) + len(dead_workload),
            "error_lines": sum(errors.values()),
            "rejected_by_workers": rejected_by_workers,
            "max_message_size": MAX_MESSAGE_SIZE,
            "rpc_ok": rpc.ok, "broadcasts_sent": broadcasts.sent,
            "broadcasts_seen": sum(w.broadcasts_seen() for w in workers),
            "duration_s": time.monotonic() - began,
        },
    )
    report(figures, capsys)

    # Dead-lettered intact, with their content type.
    assert sorted(dead_target) == sorted(target_dead)
    assert sorted(dead_workload) == sorted(workload_dead)
    assert rejected_by_workers == len(workload_dead), worker_errors
    assert all("rejecting broadcast" in text for text in worker_errors.values()), worker_errors
    assert "rejecting RPC to" in worker_errors[workers[0].name], worker_errors
    assert garbage_rpc.value.remote_type == "DecodeError"
    # The target saw the wrong-structure task (and only good tasks besides).
    assert target_tasks == [[1, 2, 3], {"id": 7}]
    assert {"seq": -1} not in target_broadcasts
    # Everyone stayed up.
    assert target_state is kiwitrio.ConnectionState.CONNECTED
    assert target_states == [kiwitrio.ConnectionState.CONNECTED,
                             kiwitrio.ConnectionState.CLOSED]
    assert returncodes == {w.name: 0 for w in workers}, fleet.describe()
    assert all([s for s in w.states() if s != "closed"] == ["connected"] for w in workers)
    # The workload alongside lost nothing and ran nothing twice.
    assert book.send_errors == []
    assert book.sent == N_TASKS
    assert problems == [], problems[:20]
    assert figures.lost == 0
    assert figures.executed_twice == 0
    assert set(completions) == set(book.handles)
    assert rpc.errors == [], rpc.errors[:10]
    assert rpc.timeouts == 0
    assert rpc.ok > 0


async def test_stray_bad_reply_is_rejected_visibly(
    names: Names, caplog: pytest.LogCaptureFixture
) -> None:
    """A bad reply that no handle waits for (unknown or expired correlation id)."""
    stray_id = f"stray-{uuid.uuid4().hex}"
    caplog.set_level(logging.DEBUG, logger="kiwitrio")
    async with kiwitrio.open_communicator(AMQP_URL, **names.kwargs()) as comm:
        reply_queue, waiting = await comm._replies.expect()
        await publish_raw(comm, "", reply_queue, GARBAGE, correlation_id=stray_id)
        # Replies are handled in order: once the good one is in, the stray one was handled.
        await publish_raw(comm, "", reply_queue, kiwitrio.cbor_encode({"result": "good"}),
                          correlation_id=waiting.correlation_id)
        with trio.fail_after(DEADLINE):
            assert await waiting == "good"
        assert comm.connection_state is kiwitrio.ConnectionState.CONNECTED
    visible = [r for r in caplog.records
               if r.levelno >= logging.WARNING and stray_id in r.getMessage()]
    logged = [r.getMessage() for r in caplog.records if stray_id in r.getMessage()]
    assert visible, (
        "regression: an undecodable reply for no waiting handle was dropped silently "
        "(ReplyRouter._resolve must decode, and log a bad reply at ERROR, before it looks "
        f"the handle up); logged about it: {logged or 'nothing'}"
    )
    # Logged at ERROR as "rejecting reply <id> on <queue>: <reason>".
    assert any(r.levelno >= logging.ERROR and "rejecting reply" in r.getMessage()
               and f"on {reply_queue}:" in r.getMessage() for r in visible), logged


def _leaves(exc: BaseException) -> list[BaseException]:
    children = getattr(exc, "exceptions", None)
    if children is None:
        return [exc]
    return [leaf for child in children for leaf in _leaves(child)]


@pytest.mark.parametrize("trigger", ["undecodable-rpc-asking-for-a-reply",
                                     "task-result-over-the-limit"])
async def test_reply_over_max_message_size_keeps_the_communicator_up(
    names: Names, trigger: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A reply that would exceed the replier's max_message_size: a short error reply (or,
    if not even that fits, an ERROR log), never a crash. Triggers: the error reply to an
    undecodable RPC (its traceback alone is about 1 KiB), and a task result over the
    limit. The limit is small enough that the error reply with its traceback exceeds it on
    every Python (tracebacks differ in length), and large enough for a short error."""
    limit = 400
    target_id = f"{names.prefix}.small"
    crash: Exception | None = None
    remote: kiwitrio.RemoteException | None = None
    async with kiwitrio.open_communicator(AMQP_URL, **names.kwargs()) as client:
        try:
            async with kiwitrio.open_communicator(
                    AMQP_URL, **names.kwargs(), max_message_size=limit) as target:
                await target.add_rpc_subscriber(lambda _c, msg: msg, target_id)
                if trigger == "undecodable-rpc-asking-for-a-reply":
                    reply_queue, handle = await client._replies.expect()
                    await publish_raw(client, "", f"{names.message_exchange}.rpc.{target_id}",
                                      GARBAGE, reply_to=reply_queue,
                                      correlation_id=handle.correlation_id)
                else:
                    await target.add_task_subscriber(
                        lambda _c, _task: "x" * (2 * limit))
                    handle = await client.task_send("a big result, please")
                replied = trio.Event()
                handle.add_done_callback(lambda _handle: replied.set())
                with trio.move_on_after(DEADLINE):
                    await replied.wait()
                if handle.done():
                    with pytest.raises(kiwitrio.RemoteException) as info:
                        handle.result()
                    remote = info.value
                # Still up, and still serving: the oversized reply was handled, not fatal.
                assert target.connection_state is kiwitrio.ConnectionState.CONNECTED
                with trio.fail_after(DEADLINE):
                    assert await (await client.rpc_send(target_id, "still there?")) == (
                        "still there?")
        except Exception as exc:  # the communicator's failure, as an exception group
            crash = exc
    if crash is not None:
        assert not any(isinstance(leaf, ValueError) and "max_message_size" in str(leaf)
                       for leaf in _leaves(crash)), (
            "regression: a reply over max_message_size crashed the replying communicator "
            "(the ValueError of Context.encode escaped ReplyRouter.send instead of becoming "
            f"a short error reply or an ERROR log) ({trigger}): {crash!r}"
        )
        raise crash
    cannot_send = [r.getMessage() for r in caplog.records
                   if r.levelno >= logging.ERROR and "cannot send the reply" in r.getMessage()]
    if remote is None:
        # Not even the short error fitted: no reply, but an ERROR log says why.
        assert cannot_send, (f"no reply within {DEADLINE}s and no 'cannot send the reply' "
                             f"ERROR line ({trigger})")
    else:
        # The short error reply that replaced the oversized one says why.
        assert "max_message_size" in remote.remote_message, remote
