"""Tracing: OpenTelemetry spans of what is sent and handled, their context in the headers."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import trio

import kiwitrio
from kiwitrio._kinds._redelivery import TASK_ID_HEADER

from .conftest import Names, OpenComm
from .test_hostile_envelopes import publish_raw

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode

DEADLINE = 10


@dataclass
class Traced:
    exporter: InMemorySpanExporter
    #: The test's own tracer, for the caller's span.
    tracer: trace.Tracer

    def named(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.exporter.get_finished_spans() if span.name == name]

    async def wait_for(self, name: str, count: int = 1) -> list[ReadableSpan]:
        """At least ``count`` finished spans called ``name``, waiting for them (a broadcast
        subscriber's span ends after the subscriber has told the test it ran)."""
        with trio.fail_after(DEADLINE):
            # The exporter is a list, with no event to wait on: polled.
            while len(spans := self.named(name)) < count:  # noqa: ASYNC110
                await trio.sleep(0.01)
        return spans

    async def one(self, name: str) -> ReadableSpan:
        """The one finished span called ``name`` (waiting for it)."""
        spans = await self.wait_for(name)
        assert len(spans) == 1, spans
        return spans[0]


@pytest.fixture
def traced() -> Iterator[Traced]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    kiwitrio.enable_tracing(provider)
    try:
        yield Traced(exporter, provider.get_tracer("tests"))
    finally:
        kiwitrio.disable_tracing()
        provider.shutdown()


def assert_child(child: ReadableSpan, parent: ReadableSpan | trace.Span) -> None:
    parent_context = (parent.context if isinstance(parent, ReadableSpan)
                      else parent.get_span_context())
    assert parent_context is not None and child.context is not None
    assert child.parent is not None, f"{child.name} has no parent"
    assert child.context.trace_id == parent_context.trace_id
    assert child.parent.span_id == parent_context.span_id


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def test_a_task_is_processed_in_a_child_of_its_senders_span(
    open_comm: OpenComm, names: Names, traced: Traced,
) -> None:
    seen: list[tuple[int, dict[str, Any]]] = []

    def double(_comm: Any, task: int) -> int:  # plain: it runs in a worker thread
        span = trace.get_current_span().get_span_context()
        seen.append((span.span_id, dict(kiwitrio.current_delivery().headers)))
        return task * 2

    async with open_comm() as comm:
        await comm.add_task_subscriber(double)
        with trio.fail_after(DEADLINE), traced.tracer.start_as_current_span("caller") as caller:
            handle = await comm.task_send(21)
            assert await handle == 42
    queue = names.task_queue
    send = await traced.one(f"send task {queue}")
    process = await traced.one(f"process task {queue}")
    assert_child(send, caller)
    assert_child(process, send)
    assert (send.kind, process.kind) == (SpanKind.PRODUCER, SpanKind.CONSUMER)
    assert attributes(send) == {
        "messaging.system": "rabbitmq", "messaging.operation.type": "send",
        "messaging.operation.name": "send", "messaging.destination.name": queue,
        "messaging.rabbitmq.destination.routing_key": queue, "kiwitrio.kind": "task",
        "messaging.message.conversation_id": handle.correlation_id,
    }
    assert attributes(process)["messaging.operation.type"] == "process"
    assert attributes(process)["messaging.message.conversation_id"] == handle.correlation_id
    # The span is current in the subscriber's thread; the context travelled as W3C headers.
    assert process.context is not None
    [(current, headers)] = seen
    assert current == process.context.span_id
    assert isinstance(headers["traceparent"], str)
    assert send.context is not None
    assert f"{send.context.span_id:016x}" in headers["traceparent"]


async def test_what_a_subscriber_sends_is_a_child_of_its_process_span(
    open_comm: OpenComm, names: Names, traced: Traced,
) -> None:
    async def ask(comm: kiwitrio.Communicator, task: str) -> Any:  # async: in the Trio task
        return await (await comm.rpc_send("echo", task))

    async with open_comm() as comm:
        await comm.add_rpc_subscriber(lambda _comm, msg: msg, "echo")
        await comm.add_task_subscriber(ask)
        with trio.fail_after(DEADLINE):
            assert await (await comm.task_send("hi")) == "hi"
    process_task = await traced.one(f"process task {names.task_queue}")
    send_rpc = await traced.one("send rpc echo")
    process_rpc = await traced.one("process rpc echo")
    assert_child(process_task, await traced.one(f"send task {names.task_queue}"))
    assert_child(send_rpc, process_task)
    assert_child(process_rpc, send_rpc)
    assert attributes(process_rpc)["kiwitrio.kind"] == "rpc"
    assert attributes(send_rpc)["messaging.destination.name"].endswith("echo")


async def test_a_broadcast_is_processed_in_children_of_its_senders_span(
    open_comm: OpenComm, traced: Traced,
) -> None:
    heard: list[str] = []
    done = trio.Event()

    def plain(_comm: Any, body: Any, *_: Any) -> None:
        heard.append("plain")

    async def ordered(_comm: Any, body: Any, *_: Any) -> None:
        heard.append("ordered")
        done.set()

    async with open_comm() as comm:
        await comm.add_broadcast_subscriber(plain)
        await comm.add_broadcast_subscriber(ordered, ordered=True)
        with trio.fail_after(DEADLINE):
            await comm.broadcast_send("news", sender="me", subject="weather")
            await done.wait()
            send = await traced.one("send broadcast weather")
            processed = await traced.wait_for("process broadcast weather", 2)
    assert sorted(heard) == ["ordered", "plain"]
    assert len(processed) == 2
    for process in processed:
        assert_child(process, send)
        assert process.kind == SpanKind.CONSUMER
    assert attributes(send)["messaging.rabbitmq.destination.routing_key"] == "weather"


async def test_a_failing_subscriber_makes_its_span_an_error(
    open_comm: OpenComm, names: Names, traced: Traced,
) -> None:
    broadcast_failed = trio.Event()

    def fail(*_: Any) -> None:
        raise ValueError("boom")

    async def fail_broadcast(*_: Any) -> None:
        broadcast_failed.set()
        raise ValueError("boom")

    async with open_comm() as comm:
        await comm.add_task_subscriber(fail)
        await comm.add_rpc_subscriber(fail, "fails")
        await comm.add_broadcast_subscriber(fail_broadcast)
        with trio.fail_after(DEADLINE):
            with pytest.raises(kiwitrio.RemoteException):
                await (await comm.task_send(1))
            with pytest.raises(kiwitrio.RemoteException):
                await (await comm.rpc_send("fails", 1))
            await comm.broadcast_send("x", subject="bad")
            await broadcast_failed.wait()
            spans = [await traced.one(f"process task {names.task_queue}"),
                     await traced.one("process rpc fails"),
                     await traced.one("process broadcast bad")]
    for span in spans:
        assert span.status.status_code == StatusCode.ERROR, span.name
        assert "ValueError: boom" in (span.status.description or "")
        [event] = [event for event in span.events if event.name == "exception"]
        assert dict(event.attributes or {})["exception.type"] == "ValueError"
    # The sends went fine: their spans are no errors.
    assert traced.named(f"send task {names.task_queue}")[0].status.status_code \
        == StatusCode.UNSET


async def test_a_declined_task_is_no_error(open_comm: OpenComm, names: Names,
                                           traced: Traced) -> None:
    def decline(*_: Any) -> None:
        raise kiwitrio.TaskRejected("not mine")

    async with open_comm() as comm:
        await comm.add_task_subscriber(decline, "decline")
        await comm.add_task_subscriber(lambda _comm, task: task, "take")
        with trio.fail_after(DEADLINE):
            assert await (await comm.task_send(3)) == 3
    process = await traced.one(f"process task {names.task_queue}")
    assert process.status.status_code == StatusCode.UNSET
    assert process.events == ()


async def test_a_failed_send_makes_its_span_an_error(open_comm: OpenComm,
                                                     traced: Traced) -> None:
    async with open_comm() as comm:
        with trio.fail_after(DEADLINE), pytest.raises(kiwitrio.UnroutableError):
            await comm.rpc_send("nobody", 1)
    send = await traced.one("send rpc nobody")
    assert send.status.status_code == StatusCode.ERROR
    assert "UnroutableError" in (send.status.description or "")


#: What a peer can put where the trace context goes; none of it may matter.
HOSTILE_HEADERS: Sequence[dict[str, Any]] = [
    {"traceparent": "garbage"},
    {"traceparent": "00-" + "z" * 32 + "-" + "z" * 16 + "-01"},
    {"traceparent": "00-" + "0" * 32 + "-" + "0" * 16 + "-01"},  # the invalid ids
    # Long, not huge: the headers go in one AMQP frame (128 KiB by default).
    {"traceparent": "x" * 30_000, "tracestate": "y" * 30_000},
    {"traceparent": bytearray(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")},
    {"traceparent": ["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]},
    {"traceparent": {"nested": "table"}, "tracestate": 12345, "baggage": "=;,=" * 1000},
    {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
     "tracestate": "\x00\xff" * 300, "baggage": "k=" + "v" * 30_000},
]


async def test_hostile_trace_headers_are_ignored(open_comm: OpenComm, names: Names,
                                                 traced: Traced) -> None:
    got: list[Any] = []
    all_in = trio.Event()

    async def collect(_comm: Any, task: Any) -> Any:
        got.append(task)
        if len(got) == len(HOSTILE_HEADERS) + 1:
            all_in.set()
        return task

    async with open_comm() as comm:
        queue = await comm.task_queue(names.task_queue)
        await comm.add_task_subscriber(collect)
        with trio.fail_after(DEADLINE):
            for number, headers in enumerate(HOSTILE_HEADERS):
                await publish_raw(comm, queue.exchange, queue.name,
                                  kiwitrio.cbor_encode(number), headers=headers)
            # And the communicator is still fine: a real task gets a real parent.
            assert await (await comm.task_send("after")) == "after"
            await all_in.wait()
    assert sorted(got, key=str) == sorted([*range(len(HOSTILE_HEADERS)), "after"], key=str)
    processed = traced.named(f"process task {names.task_queue}")
    assert len(processed) == len(HOSTILE_HEADERS) + 1
    sent = (await traced.one(f"send task {names.task_queue}")).context
    assert sent is not None
    children = [span for span in processed
                if span.parent is not None and span.parent.span_id == sent.span_id]
    assert len(children) == 1
    # The rest start traces of their own, except the last: its traceparent is valid (only
    # its tracestate and baggage are garbage), so its span joins that remote trace.
    remote_parents = [span.parent for span in processed if span not in children
                      and span.parent is not None]
    assert [f"{parent.span_id:016x}" for parent in remote_parents] == ["b7ad6b7169203331"]


async def test_off_by_default_no_headers_no_spans(open_comm: OpenComm) -> None:
    headers: list[dict[str, Any]] = []

    def record(_comm: Any, msg: Any) -> Any:
        headers.append({key: value for key, value in kiwitrio.current_delivery().headers.items()
                        if key != TASK_ID_HEADER})  # every task has its id
        return msg

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with open_comm() as comm:
        await comm.add_task_subscriber(record)
        await comm.add_rpc_subscriber(record, "record")
        with trio.fail_after(DEADLINE), provider.get_tracer("tests").start_as_current_span("a"):
            assert await (await comm.task_send(1)) == 1
            assert await (await comm.rpc_send("record", 2)) == 2
    assert headers == [{}, {}]
    assert [span.name for span in exporter.get_finished_spans()] == ["a"]


def test_enable_then_disable(traced: Traced) -> None:
    from kiwitrio import _tracing

    assert _tracing._tracer is not None
    kiwitrio.disable_tracing()
    assert _tracing._tracer is None
    with _tracing.sending("task", "q", destination="q", routing_key="q") as headers:
        assert headers == {}


def test_importing_kiwitrio_does_not_import_opentelemetry() -> None:
    code = ("import sys, kiwitrio, kiwitrio._cli, kiwitrio_sync; "
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.strip() == "[]", done


def test_enable_tracing_without_opentelemetry_says_what_to_install() -> None:
    # OpenTelemetry hidden: None in sys.modules makes its import fail.
    code = ("import sys; sys.modules['opentelemetry'] = None; import kiwitrio\n"
            "try:\n    kiwitrio.enable_tracing()\n"
            "except ImportError as exc:\n    print('ImportError:', exc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert "ImportError: kiwitrio tracing needs OpenTelemetry: " \
        "pip install 'kiwitrio[tracing]'" in done.stdout, done
