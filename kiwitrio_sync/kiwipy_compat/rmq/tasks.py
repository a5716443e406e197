"""``kiwipy.rmq.tasks``: kiwiPy's task states; its asyncio task classes by name only."""

from ..._kiwipy import TASK_FINISHED, TASK_PENDING, TASK_PROCESSING, TASK_REQUEUED
from ._unavailable import AsyncioOnly

__all__ = [
    "TASK_FINISHED",
    "TASK_PENDING",
    "TASK_PROCESSING",
    "TASK_REQUEUED",
    "RmqIncomingTask",
    "RmqTaskPublisher",
    "RmqTaskQueue",
    "RmqTaskSubscriber",
]


class RmqTaskSubscriber(AsyncioOnly):
    """kiwiPy's asyncio task subscriber: not provided."""


class RmqTaskPublisher(AsyncioOnly):
    """kiwiPy's asyncio task publisher: not provided."""


class RmqTaskQueue(AsyncioOnly):
    """kiwiPy's asyncio task queue: not provided (the thread one is RmqThreadTaskQueue)."""


class RmqIncomingTask(AsyncioOnly):
    """kiwiPy's asyncio incoming task: not provided (the thread one is
    RmqThreadIncomingTask)."""
