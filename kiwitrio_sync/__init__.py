"""kiwitrio_sync: kiwitrio's tasks, RPC and broadcasts as blocking calls, for non-async code.

The Trio core runs in a portal thread, results come back as :class:`concurrent.futures.Future`
objects, and subscribers are plain functions called in worker threads. Two faces:

- :func:`connect` / :class:`Communicator`: kiwitrio's own semantics;
- :class:`RmqThreadCommunicator`: kiwiPy 0.9's thread communicator, its observable behaviour
  included, for code written against kiwiPy. :mod:`kiwitrio_sync.kiwipy_compat` is kiwiPy's
  whole namespace; :func:`install_kiwipy_alias` makes ``import kiwipy`` resolve to it.
"""

import concurrent.futures

from kiwitrio import (
    BroadcastFilter,
    CommunicatorClosed,
    ConnectionFailed,
    ConnectionRefusedByBroker,
    ConnectionState,
    DeclarationMismatch,
    DecodeError,
    DeliveryFailed,
    DuplicateSubscriberIdentifier,
    InUseError,
    KiwitrioError,
    QueueEmpty,
    ReconnectPolicy,
    RemoteException,
    SendOutcomeUnknown,
    TaskRejected,
    UnroutableError,
    __version__,
    current_delivery,
)

from ._alias import install_kiwipy_alias, remove_kiwipy_alias
from ._communicator import Communicator, IncomingTask, TaskQueue, connect
from ._kiwipy import RmqThreadCommunicator, RmqThreadIncomingTask, RmqThreadTaskQueue
from ._kiwipy._api import ConnectionLost, InvalidStateError, OperationTimeout
from ._portal import BlockingCallInPortal, Portal

#: The futures kiwitrio_sync returns (as in kiwiPy).
Future = concurrent.futures.Future
#: Raised by ``Future.result(timeout=...)`` when the timeout expires (as in kiwiPy).
TimeoutError = concurrent.futures.TimeoutError

__all__ = [
    "BlockingCallInPortal",
    "BroadcastFilter",
    "Communicator",
    "CommunicatorClosed",
    "ConnectionFailed",
    "ConnectionLost",
    "ConnectionRefusedByBroker",
    "ConnectionState",
    "DeclarationMismatch",
    "DecodeError",
    "DeliveryFailed",
    "DuplicateSubscriberIdentifier",
    "Future",
    "InUseError",
    "IncomingTask",
    "InvalidStateError",
    "KiwitrioError",
    "OperationTimeout",
    "Portal",
    "QueueEmpty",
    "ReconnectPolicy",
    "RemoteException",
    "RmqThreadCommunicator",
    "RmqThreadIncomingTask",
    "RmqThreadTaskQueue",
    "SendOutcomeUnknown",
    "TaskQueue",
    "TaskRejected",
    "TimeoutError",
    "UnroutableError",
    "__version__",
    "connect",
    "current_delivery",
    "install_kiwipy_alias",
    "remove_kiwipy_alias",
]
