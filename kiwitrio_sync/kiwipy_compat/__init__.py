"""kiwiPy 0.9's public namespace, provided by kiwitrio: ``kiwipy`` for code written against it.

``import kiwitrio_sync.kiwipy_compat as kiwipy`` gives the names; to make ``import kiwipy``
itself resolve here (for plumpy and AiiDA, which import kiwipy), call
:func:`kiwitrio_sync.install_kiwipy_alias` before anything imports kiwipy. The submodules
(``kiwipy.rmq``, ``kiwipy.futures``, ``kiwipy.exceptions``, ``kiwipy.communications``...) are
here under the same names. The communicators are :class:`kiwitrio_sync.RmqThreadCommunicator`
(``kiwipy.rmq.RmqThreadCommunicator``) and :class:`LocalCommunicator` (on kiwitrio's in-memory
broker). What still differs from kiwiPy is listed in docs/coming-from-kiwipy.md.
"""

import logging as _logging

from . import communicate, communications, exceptions, filters, futures, local, rmq, utils
from .communicate import connect
from .communications import Communicator, CommunicatorHelper
from .exceptions import (
    CommunicatorClosed,
    DeliveryFailed,
    DuplicateSubscriberIdentifier,
    InvalidStateError,
    QueueEmpty,
    RemoteException,
    TaskRejected,
    TimeoutError,  # kiwiPy's name
    UnroutableError,
)
from .filters import BroadcastFilter
from .futures import (
    CancelledError,
    Future,
    as_completed,
    capture_exceptions,
    chain,
    copy_future,
    wait,
)
from .local import LocalCommunicator
from .utils import EventHelper

#: The kiwiPy version whose API this reproduces.
__version__ = "0.9.0"

# kiwiPy's logger name, so that logging configured for "kiwipy" keeps a home.
_logging.getLogger("kiwipy").addHandler(_logging.NullHandler())

__all__ = [
    "BroadcastFilter",
    "CancelledError",
    "Communicator",
    "CommunicatorClosed",
    "CommunicatorHelper",
    "DeliveryFailed",
    "DuplicateSubscriberIdentifier",
    "EventHelper",
    "Future",
    "InvalidStateError",
    "LocalCommunicator",
    "QueueEmpty",
    "RemoteException",
    "TaskRejected",
    "TimeoutError",
    "UnroutableError",
    "as_completed",
    "capture_exceptions",
    "chain",
    "communicate",
    "communications",
    "connect",
    "copy_future",
    "exceptions",
    "filters",
    "futures",
    "local",
    "rmq",
    "utils",
    "wait",
]
