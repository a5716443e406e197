"""``kiwipy.exceptions``: kiwiPy's exception names, bound to the classes kiwitrio raises.

``except kiwipy.RemoteException`` and the like catch what kiwitrio_sync raises, because these
are the same classes (``kiwipy.TimeoutError`` is ``concurrent.futures.TimeoutError``, the
built-in ``TimeoutError`` on Python 3.11+). One difference: :class:`RemoteException` is built
as ``RemoteException(remote_type, remote_message, remote_traceback="")``.
"""

import concurrent.futures

from kiwitrio import (
    CommunicatorClosed,
    DeliveryFailed,
    DuplicateSubscriberIdentifier,
    QueueEmpty,
    RemoteException,
    TaskRejected,
    UnroutableError,
)

from .._kiwipy._api import InvalidStateError

TimeoutError = concurrent.futures.TimeoutError  # kiwiPy's name

__all__ = [
    "CommunicatorClosed",
    "DeliveryFailed",
    "DuplicateSubscriberIdentifier",
    "InvalidStateError",
    "QueueEmpty",
    "RemoteException",
    "TaskRejected",
    "TimeoutError",
    "UnroutableError",
]
