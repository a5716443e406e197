"""Prometheus exposition of kiwitrio's metrics (``kiwitrio worker --metrics-port``).

Imported only when asked for: it needs ``prometheus_client`` (the ``kiwitrio[metrics]``
extra). The metrics live in a registry of their own, served over HTTP by
prometheus_client's server thread:

- ``kiwitrio_sent_total{kind}`` and ``kiwitrio_send_seconds{kind}``: messages sent (tasks,
  RPC calls, broadcasts) and how long the broker took to confirm each;
- ``kiwitrio_handled_total{kind, outcome}`` and ``kiwitrio_handling_seconds{kind, outcome}``:
  messages handled by this process's subscribers (outcome ``done``, ``failed`` or, for tasks,
  ``rejected``) and how long each took.
"""

from __future__ import annotations

from typing import Any

import prometheus_client

from . import _metrics

__all__ = ["PrometheusSink", "serve"]


class PrometheusSink:
    """A :class:`kiwitrio._metrics.Sink` that keeps Prometheus counters and histograms."""

    def __init__(self, registry: prometheus_client.CollectorRegistry) -> None:
        self.sent_total = prometheus_client.Counter(
            "kiwitrio_sent", "Messages sent, by kind", ["kind"], registry=registry)
        self.send_seconds = prometheus_client.Histogram(
            "kiwitrio_send_seconds", "Time until the broker confirmed a message sent",
            ["kind"], registry=registry)
        self.handled_total = prometheus_client.Counter(
            "kiwitrio_handled", "Messages handled by subscribers, by kind and outcome",
            ["kind", "outcome"], registry=registry)
        self.handling_seconds = prometheus_client.Histogram(
            "kiwitrio_handling_seconds", "Time a subscriber took to handle a message",
            ["kind", "outcome"], registry=registry)

    def sent(self, kind: str, seconds: float) -> None:
        self.sent_total.labels(kind).inc()
        self.send_seconds.labels(kind).observe(seconds)

    def handled(self, kind: str, outcome: str, seconds: float) -> None:
        self.handled_total.labels(kind, outcome).inc()
        self.handling_seconds.labels(kind, outcome).observe(seconds)


def serve(port: int, addr: str = "0.0.0.0") -> tuple[Any, int]:
    """Start the HTTP server on ``port`` (0: any free one) and report to it from now on.

    Returns the server (``shutdown()`` it) and the port it listens on. Raises OSError if
    the port cannot be bound.
    """
    registry = prometheus_client.CollectorRegistry()
    sink = PrometheusSink(registry)
    server, _thread = prometheus_client.start_http_server(port, addr, registry=registry)
    _metrics.set_sink(sink)
    return server, server.server_address[1]
