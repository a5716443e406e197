"""``kiwipy.communications``: the :class:`Communicator` interface and :class:`CommunicatorHelper`.

As in kiwiPy, this module also exposes the exception names (``from kiwipy.communications
import UnroutableError`` keeps working).
"""

from __future__ import annotations

import traceback
import uuid
from collections.abc import Callable
from typing import Any

from .._kiwipy._api import KiwipyCommunicator
from . import futures
from .exceptions import *  # noqa: F403  (kiwiPy's module has them too, outside __all__)
from .exceptions import (
    CommunicatorClosed,
    DuplicateSubscriberIdentifier,
    RemoteException,
    TaskRejected,
    UnroutableError,
)

__all__ = ["Communicator", "CommunicatorHelper"]

#: kiwiPy's interface: subclass it (plumpy's LoopCommunicator does). Its methods are marked
#: abstract; as in kiwiPy, that is not enforced when instantiating.
Communicator = KiwipyCommunicator

RpcSubscriber = Callable[[Communicator, Any], Any]
TaskSubscriber = Callable[[Communicator, Any], Any]
#: Called as subscriber(communicator, body, sender, subject, correlation_id), here with keywords.
BroadcastSubscriber = Callable[..., Any]


def _new_identifier() -> str:
    return uuid.uuid4().hex


def _remote(exc: BaseException) -> RemoteException:
    return RemoteException(
        type(exc).__qualname__, str(exc),
        "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))


class CommunicatorHelper(Communicator):
    """Keeps subscribers in dictionaries and calls them in the calling thread.

    For communicators written by hand (tests, other transports): a subclass provides
    ``task_send``, ``rpc_send`` and ``broadcast_send``, usually with :meth:`fire_task`,
    :meth:`fire_rpc` and :meth:`fire_broadcast`.
    """

    def __init__(self) -> None:
        self._task_subscribers: dict[Any, TaskSubscriber] = {}
        self._broadcast_subscribers: dict[Any, BroadcastSubscriber] = {}
        self._rpc_subscribers: dict[Any, RpcSubscriber] = {}
        self._closed = False

    def is_closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._task_subscribers.clear()
        self._broadcast_subscribers.clear()
        self._rpc_subscribers.clear()

    def _ensure_open(self) -> None:
        if self.is_closed():
            raise CommunicatorClosed("the communicator is closed")

    def add_rpc_subscriber(self, subscriber: RpcSubscriber, identifier: Any = None) -> Any:
        return self._add(self._rpc_subscribers, subscriber, identifier, "RPC identifier")

    def remove_rpc_subscriber(self, identifier: Any) -> None:
        self._remove(self._rpc_subscribers, identifier, "RPC subscriber")

    def add_task_subscriber(self, subscriber: TaskSubscriber, identifier: Any = None) -> Any:
        return self._add(self._task_subscribers, subscriber, identifier, "task subscriber")

    def remove_task_subscriber(self, identifier: Any) -> None:
        self._remove(self._task_subscribers, identifier, "task subscriber")

    def add_broadcast_subscriber(self, subscriber: BroadcastSubscriber,
                                 identifier: Any = None) -> Any:
        return self._add(self._broadcast_subscribers, subscriber, identifier,
                         "broadcast subscriber")

    def remove_broadcast_subscriber(self, identifier: Any) -> None:
        self._remove(self._broadcast_subscribers, identifier, "broadcast subscriber")

    def _add(self, registry: dict[Any, Any], subscriber: Any, identifier: Any,
             what: str) -> Any:
        self._ensure_open()
        identifier = identifier or _new_identifier()
        if identifier in registry:
            raise DuplicateSubscriberIdentifier(f"{what} {identifier!r}")
        registry[identifier] = subscriber
        return identifier

    def _remove(self, registry: dict[Any, Any], identifier: Any, what: str) -> None:
        self._ensure_open()
        if registry.pop(identifier, None) is None:
            raise ValueError(f"no {what} {identifier!r}")

    def fire_task(self, msg: Any, no_reply: bool = False) -> futures.Future[Any] | None:
        """Offer ``msg`` to the task subscribers in turn, here and now.

        The first that does not raise ``TaskRejected`` decides the outcome (its exception
        becomes a ``RemoteException``). Returns the outcome's future, or ``None`` with
        ``no_reply``; if every subscriber declined, the future stays pending.
        """
        self._ensure_open()
        future: futures.Future[Any] = futures.Future()
        for subscriber in list(self._task_subscribers.values()):
            try:
                result = subscriber(self, msg)
            except TaskRejected:
                continue
            except Exception as exc:
                future.set_exception(_remote(exc))
            else:
                future.set_result(result)
            break
        return None if no_reply else future

    def fire_rpc(self, recipient_id: Any, msg: Any) -> futures.Future[Any]:
        """Call the RPC subscriber ``recipient_id`` here and now; a future of its answer."""
        self._ensure_open()
        try:
            subscriber = self._rpc_subscribers[recipient_id]
        except KeyError:
            raise UnroutableError(f"unknown RPC recipient {recipient_id!r}") from None
        future: futures.Future[Any] = futures.Future()
        try:
            future.set_result(subscriber(self, msg))
        except Exception as exc:
            future.set_exception(_remote(exc))
        return future

    def fire_broadcast(self, body: Any, sender: Any = None, subject: Any = None,
                       correlation_id: Any = None) -> bool:
        """Call every broadcast subscriber here and now (with keyword arguments)."""
        self._ensure_open()
        for subscriber in list(self._broadcast_subscribers.values()):
            subscriber(self, body=body, sender=sender, subject=subject,
                       correlation_id=correlation_id)
        return True
