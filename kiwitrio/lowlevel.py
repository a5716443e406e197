"""Hooks for front ends built on the core, such as kiwitrio_sync's blocking communicators.

What a layer over :class:`~kiwitrio.Communicator` needs beyond the everyday API: checking
subscribers the way the core does, the defaults of :func:`~kiwitrio.open_communicator`, the
session and nursery under a communicator, and keeping process signals out of helper threads.
kiwitrio_sync uses nothing else of the core's insides; another front end can do the same.
(The task hooks are methods of the public classes: :meth:`~kiwitrio.TaskQueue.take_task`,
:meth:`~kiwitrio.IncomingTask.settle`, :meth:`~kiwitrio.BroadcastFilter.freeze`,
:attr:`~kiwitrio.Communicator.default_queue`.)
"""

import trio

from ._backends import Session
from ._bridge import block_process_signals, process_signals_unblocked
from ._communicator import (
    DEFAULT_MESSAGE_EXCHANGE,
    DEFAULT_TASK_EXCHANGE,
    DEFAULT_TASK_QUEUE,
    Communicator,
)
from ._kinds._invoke import SubscriberKind, check_subscriber_signature, is_async_callable

__all__ = [
    "DEFAULT_MESSAGE_EXCHANGE",
    "DEFAULT_TASK_EXCHANGE",
    "DEFAULT_TASK_QUEUE",
    "SubscriberKind",
    "block_process_signals",
    "check_subscriber_signature",
    "is_async_callable",
    "nursery_of",
    "process_signals_unblocked",
    "session_of",
]


def session_of(communicator: Communicator) -> Session:
    """The broker session ``communicator`` runs on (see :mod:`kiwitrio.backends`)."""
    return communicator._ctx.session


def nursery_of(communicator: Communicator) -> trio.Nursery:
    """The nursery of ``communicator``: tasks started there end when it closes."""
    return communicator._ctx.nursery
