"""Optional metrics: the core reports what it sends and handles to a sink, if one is set.

There is none by default, and then each report is one ``None`` check: nothing is timed
elsewhere, nothing imported. ``kiwitrio worker --metrics-port`` sets a Prometheus sink
(kiwitrio/_prometheus.py, which needs the ``kiwitrio[metrics]`` extra).

Kinds: ``"task"``, ``"rpc"``, ``"broadcast"``. Handling outcomes: ``"done"``, ``"failed"``
(the subscriber raised) and, for tasks, ``"rejected"`` (every subscriber declined it).
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

__all__ = ["Sink", "now", "record_handled", "record_sent", "set_sink"]

logger = logging.getLogger("kiwitrio.metrics")  # a public name (docs/configuration.md#logging)


class Sink(Protocol):
    def sent(self, kind: str, seconds: float) -> None:
        """A message of ``kind`` was sent: the broker confirmed it after ``seconds``."""

    def handled(self, kind: str, outcome: str, seconds: float) -> None:
        """A subscriber handled a message of ``kind`` in ``seconds``, with ``outcome``."""


_sink: Sink | None = None


def set_sink(sink: Sink | None) -> None:
    """Report to ``sink`` from now on, process-wide (``None``: stop reporting)."""
    global _sink
    _sink = sink


def now() -> float:
    """The start of something to time (a monotonic clock; only read when a sink is set)."""
    return time.perf_counter() if _sink is not None else 0.0


def record_sent(kind: str, started: float) -> None:
    if _sink is not None:
        try:
            _sink.sent(kind, _elapsed(started))
        except Exception:  # a metric is never worth a message
            logger.exception("the metrics sink failed")


def record_handled(kind: str, outcome: str, started: float) -> None:
    if _sink is not None:
        try:
            _sink.handled(kind, outcome, _elapsed(started))
        except Exception:
            logger.exception("the metrics sink failed")


def _elapsed(started: float) -> float:
    # 0.0: the sink was set after the start was taken; no duration rather than a wrong one.
    return max(time.perf_counter() - started, 0.0) if started else 0.0
