"""Issue 15: the whole hostile set on every queue and exchange of a live worker and client.

A worker communicator (task, RPC and broadcast subscribers, and a task on a lease, so that it
has a lease queue) and a client communicator (a broadcast subscriber, and handles waiting on
its reply queue) run in this process; an attacker publishes raw messages (through
``comm._ctx.session.publish``, so that nothing in kiwitrio's sending path refuses them) with
every payload of tests/hostile.py plus garbage, a wrong content type, a body over
``max_message_size``, and for broadcasts envelopes of the wrong shape or with an overlong
subject, to: the worker's task queue and RPC queue (asking the client for a reply), the
broadcast exchange, the client's reply queue, and the worker's lease queue.

Promised, on RabbitMQ and in memory: both communicators stay up and serving (an RPC answered
within a second afterwards), the process's memory stays below MEMORY_BOUND_MB above what it
was, the loop never pauses for long, and every hostile message is dead-lettered or answered
with an error: tasks are dead-lettered and their senders get a RemoteException, RPC callers
get a RemoteException, every broadcast is rejected by each subscriber with an ERROR line,
every reply fails the handle waiting for it with a DecodeError, and every lease-queue message
is dropped with an ERROR line.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio

import kiwitrio
from kiwitrio._backends import OutgoingMessage

from ..conftest import Names, OpenComm
from ..hostile import Payload, envelope, payload, payload_names

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

CBOR = kiwitrio.CBOR_CONTENT_TYPE
#: Below RabbitMQ 4's own limit (16 MiB; 3.x: 128 MiB), so that the broker takes the
#: oversized body and kiwitrio's limit is what refuses it.
MAX_MESSAGE_SIZE = 15 * 1024 * 1024
#: The stated bound: peak resident memory of this process (three communicators, the
#: in-memory broker's storage and the payloads' buffered copies) above its level before.
MEMORY_BOUND_MB = 400
DEADLINE = 120
TASK_LEASE = 60.0  # long: the test moves the task onto its lease itself


def hostile_set() -> list[tuple[Payload, str]]:
    """(payload, content type): everything a decoder must refuse, for every destination."""
    found = []
    for name in payload_names():
        # 60 MB would be refused for its size alone: a fifth still floods the budget.
        scale = 0.2 if name == "empty-lists" else 1.0
        found.append((payload(name, scale), CBOR))
    found.append((Payload("garbage", b"\xff\xfe\x00 not CBOR \x1f", "malformed"), CBOR))
    found.append((Payload("oversized", b"\x5a" + (MAX_MESSAGE_SIZE + 8).to_bytes(4, "big")
                          + b"x" * (MAX_MESSAGE_SIZE + 8), "over max_message_size"), CBOR))
    found.append((Payload("wrong-content-type", kiwitrio.cbor_encode({"body": 1}),
                          "not CBOR by its label"), "text/x-unknown"))
    return found


def broadcast_only_set() -> list[tuple[Payload, str]]:
    """Well-formed CBOR that is no acceptable broadcast envelope."""
    return [
        (Payload("not-an-envelope", kiwitrio.cbor_encode([1, 2, 3]), "a list"), CBOR),
        (Payload("overlong-subject", kiwitrio.cbor_encode(
            {"body": 1, "subject": "hostile." + "x" * 20_000, "sender": "s"}),
            "a 20k subject"), CBOR),
        (Payload("overlong-sender", kiwitrio.cbor_encode(
            {"body": 1, "subject": "hostile.x", "sender": "y" * 5000}),
            "a 5000-character sender"), CBOR),
        (Payload("unprintable-in-envelope", envelope(b"\xc2\x59\x07\xd0" + b"\xff" * 2000),
                 "a 2000-byte bignum as the body"), CBOR),
    ]


class LogCounter(logging.Handler):
    """Counts ERROR lines containing given texts, and wakes the test (thread-safe)."""

    def __init__(self, texts: list[str]) -> None:
        super().__init__(logging.ERROR)
        self.texts = texts
        self.counts: Counter[str] = Counter()
        self._token = trio.lowlevel.current_trio_token()
        self._changed = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        for text in self.texts:
            if text in message:
                self.counts[text] += 1
        try:
            self._token.run_sync_soon(self._wake)
        except trio.RunFinishedError:
            pass

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, expected: dict[str, int]) -> None:
        while any(self.counts[text] < n for text, n in expected.items()):
            await self._changed.wait()


def _reset_peak() -> None:
    """Linux: the peak resident memory (VmHWM) counts from now (a /proc file: instant)."""
    Path("/proc/self/clear_refs").write_text("5")


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise LookupError(field)


async def test_hostile_set_on_every_queue_and_exchange(
    open_comm: OpenComm, names: Names, broker_url: str
) -> None:
    hostile = hostile_set()
    for_broadcasts = hostile + broadcast_only_set()
    n = len(hostile)
    counter = LogCounter(["rejecting broadcast", "on lease queue", "rejecting task",
                          "rejecting RPC"])
    kiwitrio_logger = logging.getLogger("kiwitrio")
    kiwitrio_logger.addHandler(counter)
    held = trio.Event()
    release = trio.Event()
    pauses: list[float] = []

    async def hold(_comm: Any, task: Any) -> Any:
        if task == "hold":
            held.set()
            await release.wait()
        return task

    async def ticker() -> None:
        last = trio.current_time()
        while True:
            await trio.sleep(0.005)
            now = trio.current_time()
            pauses.append(now - last)
            last = now

    options = {"max_message_size": MAX_MESSAGE_SIZE}
    try:
        async with open_comm(**options, task_lease=TASK_LEASE, task_prefetch_count=4) as worker, \
                open_comm(**options) as client, open_comm(**options) as attacker, \
                trio.open_nursery() as nursery:
            await worker.add_task_subscriber(hold)
            await worker.add_rpc_subscriber(lambda _c, msg: msg, "worker-rpc")
            await worker.add_broadcast_subscriber(
                kiwitrio.BroadcastFilter(lambda *_a: None, subject="hostile.*"))
            await client.add_broadcast_subscriber(lambda *_a: None)
            # A task on a lease: the worker's lease queue exists and its keeper runs.
            holding = await client.task_send("hold")
            with trio.fail_after(DEADLINE):
                await held.wait()
            keeper = worker._default_queue._lease_keeper
            assert keeper is not None
            [lease] = list(keeper._tracked)
            await lease.move_to_lease()
            assert keeper._running

            # Baseline: after everything is set up and the payloads are built.
            _reset_peak()
            baseline_mb = _status_mb("VmRSS")
            nursery.start_soon(ticker)
            began = time.monotonic()

            async def publish(exchange: str, routing_key: str, body: bytes, content_type: str,
                              *, reply_to: str | None = None,
                              correlation_id: str | None = None) -> None:
                await attacker._ctx.session.publish(exchange, routing_key, OutgoingMessage(
                    body, content_type, reply_to=reply_to, correlation_id=correlation_id),
                    mandatory=False)

            def expect_failure(handles: list[kiwitrio.ResultHandle], done: trio.Event,
                               ) -> None:
                left = [len(handles)]

                def one_done(_handle: kiwitrio.ResultHandle) -> None:
                    left[0] -= 1
                    if not left[0]:
                        done.set()

                for handle in handles:
                    handle.add_done_callback(one_done)

            task_handles, rpc_handles, reply_handles = [], [], []
            task_queue = worker._default_queue
            for body_payload, content_type in hostile:
                reply_to, handle = await client._replies.expect()
                task_handles.append(handle)
                await publish(task_queue.exchange, task_queue.name, body_payload.body,
                              content_type, reply_to=reply_to,
                              correlation_id=handle.correlation_id)
                reply_to, handle = await client._replies.expect()
                rpc_handles.append(handle)
                await publish("", worker._rpc.queue_name("worker-rpc"), body_payload.body,
                              content_type, reply_to=reply_to,
                              correlation_id=handle.correlation_id)
                reply_to, handle = await client._replies.expect()
                reply_handles.append(handle)
                await publish("", reply_to, body_payload.body, content_type,
                              correlation_id=handle.correlation_id)
                await publish("", keeper.name, body_payload.body, content_type)
            for body_payload, content_type in for_broadcasts:
                await publish(names.message_exchange, "hostile.x", body_payload.body,
                              content_type)
            keeper._renew_now.set()  # a renewal round now: it meets the foreign messages

            all_answered = trio.Event()
            expect_failure(task_handles + rpc_handles + reply_handles, all_answered)
            with trio.fail_after(DEADLINE):
                await all_answered.wait()
                await counter.wait_for({
                    "rejecting broadcast": 2 * len(for_broadcasts),  # worker and client
                    "on lease queue": n,
                    "rejecting task": n,
                })
                # Every task is in the dead-letter queue, intact.
                dead = []
                while len(dead) < n:
                    delivery = await attacker._ctx.session.get(f"{task_queue.name}.dead-letter")
                    if delivery is None:
                        # Dead-lettering follows the rejection the log line reported; on
                        # RabbitMQ it may lag a little: look again, within the deadline.
                        await trio.sleep(0.05)
                        continue
                    dead.append(delivery.body)
                    await delivery.ack()
            handled_after = time.monotonic() - began
            peak_mb = _status_mb("VmHWM") - baseline_mb

            # Both still up and serving, at once.
            with trio.fail_after(1.0):
                assert await (await client.rpc_send("worker-rpc", "still there?")) == (
                    "still there?")
            with trio.fail_after(DEADLINE):
                await client.broadcast_send("fine", subject="hostile.ok")
                assert await (await client.task_send("after")) == "after"
            assert worker.connection_state is kiwitrio.ConnectionState.CONNECTED
            assert client.connection_state is kiwitrio.ConnectionState.CONNECTED
            release.set()
            with trio.fail_after(DEADLINE):
                assert await holding == "hold"
            nursery.cancel_scope.cancel()
    finally:
        kiwitrio_logger.removeHandler(counter)

    for handle in task_handles + rpc_handles:
        with pytest.raises(kiwitrio.RemoteException) as info:
            handle.result()
        assert info.value.remote_type == "DecodeError", info.value
    for handle in reply_handles:
        with pytest.raises(kiwitrio.DecodeError):
            handle.result()
    assert sorted(dead) == sorted(body.body for body, _ in hostile)
    print(f"\nHOSTILE {broker_url.split(':')[0]}: {n} payloads x 4 destinations + "
          f"{len(for_broadcasts)} broadcasts, all handled in {handled_after:.1f} s; peak memory "
          f"+{peak_mb:.0f} MB (bound {MEMORY_BOUND_MB}); longest loop pause "
          f"{max(pauses):.3f} s")
    assert peak_mb < MEMORY_BOUND_MB
    # A liveness bound, not a speed one: the loop never stopped for long (a loaded 2-CPU
    # machine stalls a process for a second or two now and then; a decode that blocked the
    # loop on these payloads would stop it far longer).
    assert max(pauses) < 5.0
