"""kiwitrio_sync: kiwitrio's tasks, RPC and broadcasts as blocking calls, for non-async code.

A drop-in for kiwiPy's thread communicator: the Trio core runs in a portal thread, results come
back as :class:`concurrent.futures.Future` objects, and subscribers are plain functions called
in worker threads. Start with :func:`connect`.
"""

import concurrent.futures

from kiwitrio import (
    BroadcastFilter,
    CommunicatorClosed,
    ConnectionFailed,
    ConnectionState,
    DecodeError,
    DeliveryFailed,
    DuplicateSubscriberIdentifier,
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

from ._communicator import Communicator, IncomingTask, TaskQueue, connect
from ._kiwipy import RmqThreadCommunicator
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
    "ConnectionState",
    "DecodeError",
    "DeliveryFailed",
    "DuplicateSubscriberIdentifier",
    "Future",
    "IncomingTask",
    "KiwitrioError",
    "Portal",
    "QueueEmpty",
    "ReconnectPolicy",
    "RemoteException",
    "RmqThreadCommunicator",
    "SendOutcomeUnknown",
    "TaskQueue",
    "TaskRejected",
    "TimeoutError",
    "UnroutableError",
    "__version__",
    "connect",
    "current_delivery",
]
