"""Optional tracing: OpenTelemetry spans for what the core sends and handles, if enabled.

Off by default, and then each message costs one ``None`` check: no span, no header, nothing
imported. :func:`enable_tracing` (which needs the ``kiwitrio[tracing]`` extra) sets a tracer
made by kiwitrio/_opentelemetry.py, the only module that imports OpenTelemetry.

When on, sending a task, RPC or broadcast opens a producer span and writes its context into
the message's headers (W3C ``traceparent``/``tracestate``, through OpenTelemetry's
configured propagator); handling one opens a consumer span, the child of the sender's, around
the subscriber call. Kinds: ``"task"``, ``"rpc"``, ``"broadcast"``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

__all__ = ["ProcessSpan", "Tracer", "disable_tracing", "enable_tracing", "failed", "processing",
           "sending"]

logger = logging.getLogger("kiwitrio.tracing")  # a public name (docs/configuration.md#logging)

INSTALL_HINT = "pip install 'kiwitrio[tracing]'"


class ProcessSpan(Protocol):
    def failed(self, exc: BaseException) -> None:
        """The subscriber raised ``exc`` (and kiwitrio handled it): the span is an error.

        Never raises (a span is never worth a message)."""


class Tracer(Protocol):
    def sending(self, kind: str, label: str, *, destination: str, routing_key: str,
                conversation_id: str | None) -> AbstractContextManager[Mapping[str, str]]:
        """A span around sending a message; entering it gives the headers to send with it."""

    def processing(self, kind: str, label: str, *, destination: str,
                   headers: Mapping[str, Any],
                   conversation_id: Any) -> AbstractContextManager[ProcessSpan | None]:
        """A span around handling a message that came with ``headers`` (a peer's values)."""

    def carried(self) -> AbstractContextManager[None]:
        """The calling thread's trace context, made current where this is entered."""


_tracer: Tracer | None = None

# What sending() and processing() give when tracing is off (reusable: nullcontext is).
_NO_HEADERS: AbstractContextManager[Mapping[str, str]] = nullcontext(MappingProxyType({}))
_NO_SPAN: AbstractContextManager[ProcessSpan | None] = nullcontext(None)
_NOTHING: AbstractContextManager[None] = nullcontext()


def enable_tracing(tracer_provider: TracerProvider | None = None) -> None:
    """Trace what this process sends and handles with OpenTelemetry, from now on.

    Spans come from ``tracer_provider``'s tracer, or, with ``None``, from OpenTelemetry's
    global provider (whatever ``opentelemetry.trace.set_tracer_provider`` sets, even later).
    Process-wide, like OpenTelemetry's own configuration; enabling again replaces the
    provider. Raises :class:`ImportError` if OpenTelemetry is not installed (the
    ``kiwitrio[tracing]`` extra).
    """
    try:
        from . import _opentelemetry
    except ImportError as exc:
        if not (exc.name or "").startswith("opentelemetry"):
            raise
        raise ImportError(f"kiwitrio tracing needs OpenTelemetry: {INSTALL_HINT}",
                          name=exc.name) from exc
    global _tracer
    _tracer = _opentelemetry.OpenTelemetryTracer(tracer_provider)


def disable_tracing() -> None:
    """Stop tracing (the default): messages get no spans and no trace headers."""
    global _tracer
    _tracer = None


def sending(kind: str, label: str, *, destination: str, routing_key: str,
            conversation_id: str | None = None) -> AbstractContextManager[Mapping[str, str]]:
    """``with sending(...) as headers:`` around a publish; ``headers`` go in the message.

    ``label`` names the span (``send <kind> <label>``): a queue, an RPC identifier, a
    subject. Empty headers when tracing is off.
    """
    if _tracer is None:
        return _NO_HEADERS
    return _tracer.sending(kind, label, destination=destination, routing_key=routing_key,
                           conversation_id=conversation_id)


def processing(kind: str, label: str, *, destination: str, headers: Mapping[str, Any],
               conversation_id: Any = None) -> AbstractContextManager[ProcessSpan | None]:
    """``with processing(...) as span:`` around a subscriber call (``None`` when off).

    The span is current inside the block, so what the subscriber sends is its child. An
    exception leaving the block marks the span as an error; :func:`failed` does it for one
    kiwitrio catches inside. Cancellation passes through and just ends the span.
    """
    if _tracer is None:
        return _NO_SPAN
    return _tracer.processing(kind, label, destination=destination, headers=headers,
                              conversation_id=conversation_id)


def carried() -> AbstractContextManager[None]:
    """The caller's trace context, to enter in the Trio task that works on its behalf.

    For kiwitrio_sync: a blocking call runs in a task of the portal thread, where the caller
    thread's current span would not be seen (OpenTelemetry's context is a context variable);
    entered there, the sends it makes are children of the caller's span. Taken now, entered
    once.
    """
    if _tracer is None:
        return _NOTHING
    return _tracer.carried()


def failed(span: ProcessSpan | None, exc: BaseException) -> None:
    """Mark ``span`` (from :func:`processing`) failed with ``exc``; never raises."""
    if span is not None:
        span.failed(exc)
