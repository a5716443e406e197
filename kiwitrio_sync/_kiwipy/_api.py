"""kiwiPy's communicator interface and the exceptions of the kiwiPy face.

:class:`KiwipyCommunicator` is the interface kiwiPy code programs against (``kiwipy.Communicator``
in the compatibility package, :mod:`kiwitrio_sync.kiwipy_compat`): plumpy derives its
``LoopCommunicator`` from it, AiiDA its ZeroMQ communicator. As in kiwiPy, its methods are
marked abstract but the class has no ABC metaclass, so a subclass that leaves some out can
still be instantiated (calling a missing one raises :class:`NotImplementedError`).

The exceptions here are what :class:`~kiwitrio_sync.RmqThreadCommunicator` raises where kiwiPy
code catches something kiwitrio's own names would not match.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
from types import TracebackType
from typing import Any

import aiormq.exceptions

from kiwitrio import CommunicatorClosed, ConnectionFailed, KiwitrioError

__all__ = ["ConnectionLost", "InvalidStateError", "KiwipyCommunicator", "OperationTimeout"]


class InvalidStateError(KiwitrioError, asyncio.InvalidStateError):
    """An object is not in a state that allows the operation (kiwiPy's ``InvalidStateError``).

    Raised by an incoming task's ``process()``, ``processing()`` and ``requeue()`` when the
    task is no longer pending. Also an ``asyncio.InvalidStateError``, which kiwiPy's incoming
    tasks raised there.
    """


class OperationTimeout(KiwitrioError, concurrent.futures.TimeoutError):
    """A kiwiPy-face call did not complete within ``async_task_timeout`` seconds.

    It is ``kiwipy.TimeoutError`` (``concurrent.futures.TimeoutError``), which kiwiPy raises
    and plumpy catches. The operation was not cancelled: it goes on in the portal and may
    still take effect (a send is made once the connection is back, a subscriber added...).
    Nobody knows more at this point; the message says so.
    """


class ConnectionLost(ConnectionFailed, CommunicatorClosed, aiormq.exceptions.ConnectionClosed):
    """The kiwiPy face's call failed because the connection to the broker is gone.

    A :class:`~kiwitrio.ConnectionFailed` and a :class:`~kiwitrio.CommunicatorClosed` that is
    also aio-pika's ``ConnectionClosed`` (``aiormq.exceptions.ConnectionClosed``), which is what
    plumpy catches around its state-change broadcasts when kiwiPy loses its connection.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "the connection to the broker is gone"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


class KiwipyCommunicator:
    """kiwiPy's ``Communicator`` interface: tasks, RPC and broadcasts, blocking.

    Subclasses implement every method below; ``with communicator:`` closes it at the end.
    Subscribers are called as ``subscriber(communicator, msg)`` (RPC), ``subscriber(
    communicator, task)`` (tasks) and ``subscriber(communicator, body, sender, subject,
    correlation_id)`` (broadcasts).
    """

    def __enter__(self) -> Any:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    @abc.abstractmethod
    def is_closed(self) -> bool:
        """True once the communicator was closed."""
        raise NotImplementedError

    @abc.abstractmethod
    def close(self) -> None:
        """Free every resource; later operations raise ``CommunicatorClosed``."""
        raise NotImplementedError

    @abc.abstractmethod
    def add_rpc_subscriber(self, subscriber: Any, identifier: Any = None) -> Any:
        """Answer RPCs to ``identifier`` (a new one if ``None``); returns the identifier."""
        raise NotImplementedError

    @abc.abstractmethod
    def remove_rpc_subscriber(self, identifier: Any) -> None:
        """Remove an RPC subscriber; :class:`ValueError` if there is none of that name."""
        raise NotImplementedError

    @abc.abstractmethod
    def add_task_subscriber(self, subscriber: Any, identifier: Any = None) -> Any:
        """Work on tasks from the default queue; returns the identifier."""
        raise NotImplementedError

    @abc.abstractmethod
    def remove_task_subscriber(self, identifier: Any) -> None:
        """Remove a task subscriber; :class:`ValueError` if there is none of that name."""
        raise NotImplementedError

    @abc.abstractmethod
    def add_broadcast_subscriber(self, subscriber: Any, identifier: Any = None) -> Any:
        """Receive every broadcast (filter with a ``BroadcastFilter``); returns the
        identifier."""
        raise NotImplementedError

    @abc.abstractmethod
    def remove_broadcast_subscriber(self, identifier: Any) -> None:
        """Remove a broadcast subscriber; :class:`ValueError` if there is none."""
        raise NotImplementedError

    @abc.abstractmethod
    def task_send(self, task: Any, no_reply: bool = False) -> Any:
        """Queue a task; a future of its outcome (``None`` with ``no_reply``)."""
        raise NotImplementedError

    @abc.abstractmethod
    def rpc_send(self, recipient_id: Any, msg: Any) -> Any:
        """Call ``recipient_id``; a future of the answer."""
        raise NotImplementedError

    @abc.abstractmethod
    def broadcast_send(self, body: Any, sender: Any = None, subject: Any = None,
                       correlation_id: Any = None) -> Any:
        """Send a broadcast to every subscriber; ``True`` once sent."""
        raise NotImplementedError
