"""kiwitrio: durable tasks, RPC and broadcasts over RabbitMQ, for Trio.

Open a communicator with :func:`open_communicator` (``amqp://`` for RabbitMQ, ``memory://`` for
the in-process broker) and use it inside the ``async with`` block.
"""

import logging as _logging

from ._backends import ConnectionState, ReconnectPolicy
from ._codec import (
    CBOR_CONTENT_TYPE,
    DecodeLimits,
    Decoder,
    Encoder,
    cbor_decode,
    cbor_decoder,
    cbor_encode,
)
from ._communicator import DEFAULT_URL, Communicator, CommunicatorOptions, open_communicator
from ._errors import (
    CommunicatorClosed,
    ConnectionFailed,
    ConnectionRefusedByBroker,
    DeclarationMismatch,
    DecodeError,
    DeliveryFailed,
    DeliveryLimitExceeded,
    DuplicateSubscriberIdentifier,
    InUseError,
    KiwitrioError,
    QueueEmpty,
    RemoteException,
    SendOutcomeUnknown,
    TaskRejected,
    UnroutableError,
)
from ._finished import FinishedTasks, MemoryFinishedTasks, SqliteFinishedTasks
from ._gather import ResultsAsCompleted, as_completed
from ._kinds._admin import QueueStatus
from ._kinds._broadcast import BroadcastFilter
from ._kinds._context import DeliveryInfo, current_delivery
from ._kinds._control import CommunicatorInfo, InFlightTask
from ._kinds._durable import QueueType
from ._kinds._pulled import IncomingTask, TaskOutcome
from ._kinds._replies import ResultHandle
from ._kinds._tasks import TaskQueue
from ._tracing import disable_tracing, enable_tracing
from ._version import __version__

# A library logs through the standard logging module and prints nothing unless the
# application configures logging (no "last resort" output to stderr).
_logging.getLogger(__name__).addHandler(_logging.NullHandler())

__all__ = [
    "CBOR_CONTENT_TYPE",
    "DEFAULT_URL",
    "BroadcastFilter",
    "Communicator",
    "CommunicatorClosed",
    "CommunicatorInfo",
    "CommunicatorOptions",
    "ConnectionFailed",
    "ConnectionRefusedByBroker",
    "ConnectionState",
    "DeclarationMismatch",
    "DecodeError",
    "DecodeLimits",
    "Decoder",
    "DeliveryFailed",
    "DeliveryInfo",
    "DeliveryLimitExceeded",
    "DuplicateSubscriberIdentifier",
    "Encoder",
    "FinishedTasks",
    "InFlightTask",
    "InUseError",
    "IncomingTask",
    "KiwitrioError",
    "MemoryFinishedTasks",
    "QueueEmpty",
    "QueueStatus",
    "QueueType",
    "ReconnectPolicy",
    "RemoteException",
    "ResultHandle",
    "ResultsAsCompleted",
    "SendOutcomeUnknown",
    "SqliteFinishedTasks",
    "TaskOutcome",
    "TaskQueue",
    "TaskRejected",
    "UnroutableError",
    "__version__",
    "as_completed",
    "cbor_decode",
    "cbor_decoder",
    "cbor_encode",
    "current_delivery",
    "disable_tracing",
    "enable_tracing",
    "open_communicator",
]
