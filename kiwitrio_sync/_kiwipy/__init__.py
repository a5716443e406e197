"""The kiwiPy face: :class:`RmqThreadCommunicator` behaves as kiwiPy 0.9's thread communicator.

Code written against kiwiPy (plumpy, AiiDA) relies on what kiwiPy does, not only on its names.
This face reproduces that over kiwitrio's core, where :class:`~kiwitrio_sync.Communicator` keeps
kiwitrio's own semantics:

- a subscriber that returns a future makes the sender's future resolve to *another* future,
  one level per future in the chain (kiwiPy's "pending" replies; the core sends them for
  subscribers added with ``pending_replies=True``);
- RPC identifiers may be any value; they are turned into strings, as kiwiPy does;
- ``task_send(no_reply=True)`` returns ``None``;
- pull mode as kiwiPy's: a task whose ``process()`` future is alive stays reserved for the
  worker, whenever the future is resolved the task is finished, and a future that is dropped
  unresolved puts the task back; iterating over a queue keeps the tasks it did not process
  reserved until the iteration ends (then puts them back);
- every blocking call waits at most ``async_task_timeout`` seconds (5 by default, as kiwiPy)
  and then raises ``kiwipy.TimeoutError`` saying that the operation may still happen;
- a call that fails because the connection is gone raises :class:`ConnectionLost`, which is
  also aio-pika's ``ConnectionClosed``;
- ``add_close_callback``/``remove_close_callback``; broadcast subscribers see broadcasts one at
  a time, in order.

Modules: ``_communicator`` (connect, the communicator, closing), ``_tasks`` (task queues and
pull mode), ``_futures`` (nested and relayed futures), ``_api`` (kiwiPy's base classes and
exceptions).
"""

from ._communicator import RmqThreadCommunicator, connect
from ._lifecycle import CLOSE_LINGER
from ._tasks import (
    TASK_FINISHED,
    TASK_PENDING,
    TASK_PROCESSING,
    TASK_REQUEUED,
    RmqThreadIncomingTask,
    RmqThreadTaskQueue,
)

__all__ = [
    "CLOSE_LINGER",
    "TASK_FINISHED",
    "TASK_PENDING",
    "TASK_PROCESSING",
    "TASK_REQUEUED",
    "RmqThreadCommunicator",
    "RmqThreadIncomingTask",
    "RmqThreadTaskQueue",
    "connect",
]
