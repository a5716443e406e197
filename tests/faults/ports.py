"""Loopback ports for private nodes that nothing else on the machine will take meanwhile.

A port the kernel hands out for ``bind(0)`` is an ephemeral one: once it is closed again,
the next outgoing connection of any process may get it as its local port. A private node
is given its port seconds before it binds it (Erlang boots first), and keeps it across
SIGKILL and restart, when it is unbound again for seconds; with a test matrix opening
connections beside it, CI saw a node fail to start with ``eaddrinuse`` on such a port.

So ports come from below (or above) the kernel's ephemeral range, which outgoing
connections never use, and are reserved against other test processes by an exclusive
``flock`` on a file named after the port, held for as long as this process holds the port.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import socket
import tempfile
from pathlib import Path
from typing import IO

_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOCK_DIR = Path(tempfile.gettempdir()) / "kiwitrio-test-ports"
#: Ports below this are left to services (and need no root to bind above it anyway).
_LOWEST = 10000
_ATTEMPTS = 500

_held: dict[int, IO[bytes]] = {}


def reservable_range() -> tuple[int, int]:
    """The widest span of ports outside the kernel's ephemeral range."""
    try:
        low, high = (int(part) for part in _EPHEMERAL_RANGE.read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    below = (_LOWEST, low - 1)
    above = (high + 1, 65535)
    return max(below, above, key=lambda span: span[1] - span[0])


def reserve_port() -> int:
    """A loopback port that is free now and that no other test process will be handed.

    Hold it until :func:`release_port` (or the end of the process).
    """
    low, high = reservable_range()
    if high - low < 100:
        raise RuntimeError(f"no ports outside the ephemeral range {_EPHEMERAL_RANGE} to use")
    for _ in range(_ATTEMPTS):
        port = random.randint(low, high)
        if port in _held:
            continue
        lock = _lock(port)
        if lock is None:
            continue
        if _bindable(port):
            _held[port] = lock
            return port
        lock.close()
    raise RuntimeError(f"no free loopback port in {low}-{high} after {_ATTEMPTS} tries")


def release_port(port: int) -> None:
    """Let other test processes have ``port`` again (idempotent)."""
    lock = _held.pop(port, None)
    if lock is not None:
        lock.close()


def _lock(port: int) -> IO[bytes] | None:
    """The port's lock file, exclusively locked; None if another process holds it."""
    _LOCK_DIR.mkdir(exist_ok=True)
    with contextlib.suppress(OSError):
        os.chmod(_LOCK_DIR, 0o1777)  # shared by every user's test runs, like /tmp itself
    try:
        lock = open(_LOCK_DIR / str(port), "ab")  # held open: the lock lasts as long
    except OSError:  # another user's lock file
        return None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        return None
    return lock


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
