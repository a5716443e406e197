"""kiwitrio's tracer on OpenTelemetry (what it traces: kiwitrio/_tracing.py).

Imported only by :func:`kiwitrio.enable_tracing`: it needs ``opentelemetry-api`` (the
``kiwitrio[tracing]`` extra). Attributes follow OpenTelemetry's messaging semantic
conventions.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from ._saferepr import describe_error
from ._version import __version__

__all__ = ["MAX_HEADER_CHARS", "OpenTelemetryTracer"]

# kiwitrio/_tracing.py's logger, by name: that module imports this one.
logger = logging.getLogger("kiwitrio.tracing")  # a public name (docs/configuration.md#logging)

#: Longer header values are not read as trace context (W3C: a tracestate has at most 512
#: characters, a baggage header 8192), so a peer's huge header costs nothing to parse.
MAX_HEADER_CHARS = 8192


class _HeaderGetter(Getter[Mapping[str, Any]]):
    """Reads trace context from a delivery's headers, which a peer wrote: any AMQP value.

    Only strings are handed to the propagators (they expect nothing else: bytes or a table
    would make them raise); they ignore a malformed ``traceparent`` themselves.
    """

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        if isinstance(value, str) and len(value) <= MAX_HEADER_CHARS:
            return [value]
        return None

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return [key for key in carrier if isinstance(key, str)]


_GETTER = _HeaderGetter()


class _ProcessSpan:
    __slots__ = ("_span",)

    def __init__(self, span: Span) -> None:
        self._span = span

    def failed(self, exc: BaseException) -> None:
        _mark_failed(self._span, exc)


class OpenTelemetryTracer:
    """Spans from ``provider``'s tracer (``None``: the global provider's)."""

    def __init__(self, provider: trace.TracerProvider | None) -> None:
        self._tracer = trace.get_tracer("kiwitrio", __version__, tracer_provider=provider)

    @contextmanager
    def sending(self, kind: str, label: str, *, destination: str, routing_key: str,
                conversation_id: str | None) -> Iterator[Mapping[str, str]]:
        attributes = _attributes("send", kind, destination, conversation_id)
        attributes["messaging.rabbitmq.destination.routing_key"] = routing_key
        # The current context is the caller's: the producer span is a child of its span.
        with self._span(_name("send", kind, label), SpanKind.PRODUCER, attributes, None):
            yield _inject()

    @contextmanager
    def processing(self, kind: str, label: str, *, destination: str,
                   headers: Mapping[str, Any], conversation_id: Any) -> Iterator[_ProcessSpan]:
        # Always a fresh context: a message without trace context starts a trace, rather
        # than joining whatever span happened to be current when kiwitrio started consuming.
        parent = _extract(headers)
        conversation = conversation_id if isinstance(conversation_id, str) else None
        attributes = _attributes("process", kind, destination, conversation)
        with self._span(_name("process", kind, label), SpanKind.CONSUMER, attributes,
                        parent) as span:
            yield _ProcessSpan(span)

    def carried(self) -> AbstractContextManager[None]:
        return _attached(otel_context.get_current())  # now, in the calling thread

    @contextmanager
    def _span(self, name: str, kind: SpanKind, attributes: dict[str, AttributeValue],
              parent: Context | None) -> Iterator[Span]:
        """A current span; an exception leaving it marks it failed (cancellation does not:
        it is no error of the message's)."""
        # OpenTelemetry's own recording formats the exception unguarded; ours cannot raise.
        with self._tracer.start_as_current_span(name, context=parent, kind=kind,
                                                attributes=attributes,
                                                record_exception=False,
                                                set_status_on_exception=False) as span:
            try:
                yield span
            except Exception as exc:
                _mark_failed(span, exc)
                raise


@contextmanager
def _attached(context: Context) -> Iterator[None]:
    token = otel_context.attach(context)
    try:
        yield
    finally:
        otel_context.detach(token)


def _name(operation: str, kind: str, label: str) -> str:
    return f"{operation} {kind} {label}" if label else f"{operation} {kind}"


def _attributes(operation: str, kind: str, destination: str,
                conversation_id: str | None) -> dict[str, AttributeValue]:
    attributes: dict[str, AttributeValue] = {
        "messaging.system": "rabbitmq",
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
        "messaging.destination.name": destination,
        "kiwitrio.kind": kind,
    }
    if conversation_id is not None:
        attributes["messaging.message.conversation_id"] = conversation_id
    return attributes


def _inject() -> dict[str, str]:
    """The current context as headers (through the configured propagator; W3C by default)."""
    carrier: dict[str, Any] = {}
    try:
        propagate.inject(carrier)
    except Exception:  # a span is never worth a message
        logger.exception("could not write trace context into a message's headers")
        return {}
    # AMQP headers: only strings (a third-party propagator might set something else).
    return {key: value for key, value in carrier.items()
            if isinstance(key, str) and isinstance(value, str)}


def _extract(headers: Mapping[str, Any]) -> Context:
    try:
        return propagate.extract(headers, context=Context(), getter=_GETTER)
    except Exception:
        logger.exception("could not read the trace context of a message's headers")
        return Context()


def _mark_failed(span: Span, exc: BaseException) -> None:
    try:
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, describe_error(exc)))
    except Exception:
        logger.exception("recording an error on a span failed")
