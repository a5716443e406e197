"""Doorbells: how a publisher wakes the connections that consume its target queues, without
them polling the file.

Each connection binds a Unix datagram socket; its address is in its ``connections`` row. After
a commit, whoever changed a queue sends one byte to each consumer connection of it ("ring").
A ring is a hint, never the data: a lost or extra one only costs a wasted look at the file,
and each connection also looks every poll interval anyway (the safety net).

On Linux the sockets are in the abstract namespace (no file; the kernel removes the name
when the process dies, which also tells a reaper that a silent connection is gone). Elsewhere
they are files in ``<db>.bells/``.
"""

from __future__ import annotations

import errno
import os
import socket
import sys

import trio

__all__ = ["Doorbell", "is_gone", "ring"]

#: Addresses starting with this are abstract (the NUL byte does not go in the database).
_ABSTRACT = "@"
_ABSTRACT_NAMESPACE = sys.platform == "linux"


def _sockaddr(address: str) -> str:
    return "\0" + address[1:] if address.startswith(_ABSTRACT) else address


def _address_for(db_path: str, connection: str) -> str:
    if _ABSTRACT_NAMESPACE:
        return f"{_ABSTRACT}kiwitrio-{connection}"
    directory = db_path + ".bells"
    os.makedirs(directory, exist_ok=True)
    return os.path.join(directory, connection[:16])


#: One unbound, non-blocking socket per process for ringing (sharing it between threads is
#: fine); made anew in a forked child, which must not share its parent's.
_senders: dict[int, socket.socket] = {}


def _sending_socket() -> socket.socket:
    sock = _senders.get(os.getpid())
    if sock is None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        _senders.clear()
        _senders[os.getpid()] = sock
    return sock


def _send(address: str) -> int:
    """Ring once; 0 or the errno of a failure."""
    try:
        _sending_socket().sendto(b"!", _sockaddr(address))
    except OSError as exc:
        return exc.errno or -1
    return 0


def ring(addresses: set[str]) -> None:
    """Ring each doorbell; never blocks. A full doorbell has been rung already; a dead one's
    owner is reaped by the heartbeat check."""
    for address in addresses:
        _send(address)


def is_gone(address: str) -> bool:
    """Whether nobody holds the doorbell any more (its process died or closed it)."""
    return _send(address) in (errno.ECONNREFUSED, errno.ENOENT)


class Doorbell:
    """A connection's own doorbell: :meth:`wait` returns when it rang."""

    def __init__(self, raw: socket.socket, address: str) -> None:
        self._raw = raw
        self._sock = trio.socket.from_stdlib_socket(raw)
        #: As stored in the database (and given to :func:`ring`).
        self.address = address

    @classmethod
    def bind(cls, db_path: str, connection: str) -> Doorbell:
        """Bind a new doorbell for ``connection`` (a local socket: binding never blocks)."""
        address = _address_for(db_path, connection)
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            raw.setblocking(False)
            raw.bind(_sockaddr(address))
        except BaseException:
            raw.close()
            raise
        return cls(raw, address)

    async def wait(self) -> None:
        """Wait for a ring, then swallow any others already queued (one look covers all).

        Cancellation: a plain wait; nothing is lost (rings are only hints).
        """
        await self._sock.recv(64)
        while True:
            try:
                self._raw.recv(64)
            except BlockingIOError:
                break

    def close(self) -> None:
        self._sock.close()
        if not self.address.startswith(_ABSTRACT):
            try:
                os.unlink(self.address)
            except OSError:
                pass
