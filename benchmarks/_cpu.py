"""Measuring: CPU time per message (the client process's own, and the local broker's) and
latency statistics. Standard library only (the kiwiPy environment imports it too)."""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["broker_pid", "cpu_cost", "latency_summary", "percentile", "process_cpu_seconds"]


def broker_pid() -> int | None:
    """The pid of the local RabbitMQ node's ``beam.smp`` (the oldest, if there are several:
    private test nodes come and go, the shared broker stays), or None if none is visible."""
    found: list[tuple[int, int]] = []  # (start time in ticks, pid)
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)
            if not fields[0].endswith("(beam.smp"):
                continue
            found.append((int(fields[1].split()[19]), int(entry)))
        except (OSError, IndexError, ValueError):
            continue
    return min(found)[1] if found else None


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU of process ``pid`` so far, from /proc (readable for any user)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # Fields 14 and 15 of stat(5) (utime, stime); the split starts at field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_BROKER_PID = broker_pid()


@contextlib.contextmanager
def cpu_cost(out: dict[str, Any], key: str, count: int) -> Iterator[None]:
    """Record the client process's CPU time (all threads) per message in ``out[key]``, in
    microseconds: less sensitive to other work on the machine than the rates. The local
    broker's CPU over the same span goes to ``out["broker_" + key]``: it counts whatever else
    uses that broker meanwhile, so it is an upper bound of the broker's own cost."""
    broker_start = process_cpu_seconds(_BROKER_PID) if _BROKER_PID else None
    start = time.process_time()
    yield
    out[key] = (time.process_time() - start) / count * 1e6
    broker_end = process_cpu_seconds(_BROKER_PID) if _BROKER_PID else None
    if broker_start is not None and broker_end is not None:
        out["broker_" + key] = (broker_end - broker_start) / count * 1e6


# -- latency -------------------------------------------------------------------------------


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) with linear interpolation."""
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    return {"median_ms": statistics.median(seconds) * 1e3,
            "p99_ms": percentile(seconds, 0.99) * 1e3}
