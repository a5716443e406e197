"""Doorbells: how a publisher wakes the connections that consume its target queues, without
them polling the file.

Each connection binds a Unix datagram socket; its address is in its ``connections`` row. After
a commit, whoever changed a queue sends one datagram to each consumer connection of it
("ring"), naming the consumers there whose queues got messages, or that got messages
delivered to them (:data:`PUSHED`), or :data:`EVERY`: look at all of them. A ring is a hint,
never the data: a lost or extra one only costs a wasted look at the file, and each
connection also looks every poll interval anyway (the safety net). Naming the consumers lets
a connection claim at once for a consumer nobody else competes with, instead of looking
first, and read what was pushed to one without looking at the others.

Checking whether a doorbell is still held (:func:`is_gone`) sends a probe, which its owner
reads and ignores.

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

__all__ = ["EVERY", "PUSHED", "Doorbell", "is_gone", "ring"]

#: In a ring: look at every consumer (consumer ids are hex, so this is never one).
EVERY = "*"
#: In a ring, before a consumer id: messages were delivered to that consumer by their
#: publish; it reads them (no claim). A bare id: its queue has ready messages to claim.
PUSHED = "+"
#: The datagram :func:`is_gone` sends: ignored by the doorbell's owner.
_PROBE = b"?"
#: A ring naming more consumers than this says :data:`EVERY` instead (a short datagram).
_MOST_NAMED = 32
_RECEIVE_BYTES = 4096
#: Taking this many rings in one :meth:`Doorbell.wait` says to look at every consumer: the
#: doorbell may have been full, and the rings refused then named consumers we do not know
#: of. (Linux queues at most ``net.unix.max_dgram_qlen`` datagrams, 10 by default.)
_MAYBE_FULL = 8

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


def _send(address: str, payload: bytes) -> int:
    """Send one datagram; 0 or the errno of a failure."""
    try:
        _sending_socket().sendto(payload, _sockaddr(address))
    except OSError as exc:
        return exc.errno or -1
    return 0


def _payload(consumers: set[str]) -> bytes:
    if EVERY in consumers or len(consumers) > _MOST_NAMED:
        return EVERY.encode()
    return " ".join(sorted(consumers)).encode()


def ring(rings: dict[str, set[str]]) -> None:
    """Ring each doorbell (address: the consumers there to name); never blocks. A full
    doorbell's owner has been rung already and has not looked yet (it will look at what
    those rings named); a dead one's owner is reaped by the heartbeat check."""
    for address, consumers in rings.items():
        _send(address, _payload(consumers))


def is_gone(address: str) -> bool:
    """Whether nobody holds the doorbell any more (its process died or closed it)."""
    return _send(address, _PROBE) in (errno.ECONNREFUSED, errno.ENOENT)


def _named(payload: bytes) -> set[str]:
    """The consumers a ring names: none for a probe, :data:`EVERY` for one that does not
    parse (a ring from another version of kiwitrio, say)."""
    if payload == _PROBE:
        return set()
    try:
        names = set(payload.decode("ascii").split())
    except UnicodeDecodeError:
        return {EVERY}
    valid = bool(names) and all(name.removeprefix(PUSHED).isalnum() for name in names)
    return names if valid else {EVERY}


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

    async def wait(self) -> set[str]:
        """Wait for a ring (probes do not count), then take any others already queued (one
        look covers all); the consumers they name, :data:`EVERY` among them if one said
        to look at everything.

        Cancellation: a plain wait; nothing is lost (rings are only hints).
        """
        named: set[str] = set()
        while not named:
            named = _named(await self._sock.recv(_RECEIVE_BYTES))
        taken = 1
        while True:
            try:
                payload = self._raw.recv(_RECEIVE_BYTES)
            except BlockingIOError:
                break
            named |= _named(payload)
            taken += 1
        if taken >= _MAYBE_FULL:
            named.add(EVERY)
        return named

    def close(self) -> None:
        self._sock.close()
        if not self.address.startswith(_ABSTRACT):
            try:
                os.unlink(self.address)
            except OSError:
                pass
