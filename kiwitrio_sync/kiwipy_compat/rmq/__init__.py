"""``kiwipy.rmq``: the RabbitMQ communicators.

:class:`RmqThreadCommunicator` is :class:`kiwitrio_sync.RmqThreadCommunicator`. kiwiPy's asyncio
classes (``RmqCommunicator``, ``async_connect``, ``RmqTaskQueue``...) are here by name only:
using one raises :class:`NotImplementedError` (use the thread communicator, or kiwitrio's Trio
API).
"""

from . import communicator, defaults, tasks, threadcomms
from .communicator import RmqCommunicator, async_connect
from .tasks import (
    TASK_FINISHED,
    TASK_PENDING,
    TASK_PROCESSING,
    TASK_REQUEUED,
    RmqIncomingTask,
    RmqTaskPublisher,
    RmqTaskQueue,
    RmqTaskSubscriber,
)
from .threadcomms import RmqThreadCommunicator, RmqThreadIncomingTask, RmqThreadTaskQueue, connect

__all__ = [
    "TASK_FINISHED",
    "TASK_PENDING",
    "TASK_PROCESSING",
    "TASK_REQUEUED",
    "RmqCommunicator",
    "RmqIncomingTask",
    "RmqTaskPublisher",
    "RmqTaskQueue",
    "RmqTaskSubscriber",
    "RmqThreadCommunicator",
    "RmqThreadIncomingTask",
    "RmqThreadTaskQueue",
    "async_connect",
    "communicator",
    "connect",
    "defaults",
    "tasks",
    "threadcomms",
]
