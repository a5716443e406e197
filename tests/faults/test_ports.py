"""Private nodes' ports: outside the ephemeral range, and not handed to two test processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .ports import release_port, reservable_range, reserve_port

ROOT = Path(__file__).resolve().parents[2]


def ephemeral_range() -> tuple[int, int]:
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return int(low), int(high)


def test_reserved_ports_are_outside_the_ephemeral_range() -> None:
    low, high = ephemeral_range()
    ports = [reserve_port() for _ in range(20)]
    try:
        assert len(set(ports)) == len(ports)
        assert all(not low <= port <= high for port in ports), (ports, (low, high))
        first, last = reservable_range()
        assert all(first <= port <= last for port in ports)
    finally:
        for port in ports:
            release_port(port)


def locked_elsewhere(port: int) -> bool:
    """Whether another process finds ``port``'s lock held."""
    probe = ("import sys; from tests.faults.ports import _lock; "
             f"sys.exit(0 if _lock({port}) is None else 1)")
    return subprocess.run([sys.executable, "-c", probe], cwd=ROOT, timeout=60).returncode == 0


def test_a_reserved_port_is_held_against_other_processes_until_released() -> None:
    port = reserve_port()
    try:
        assert locked_elsewhere(port)
    finally:
        release_port(port)
    assert not locked_elsewhere(port)
