"""What a task's earlier deliveries decide before it runs: a task past its delivery limit is
dead-lettered (it keeps killing its workers), and a task already finished is answered from the
store of finished tasks instead of running again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from .._backends import Delivery
from .._errors import DeliveryLimitExceeded
from .._finished import FinishedTasks
from .._saferepr import describe_error, safe_repr

__all__ = ["TASK_ID_HEADER", "Redeliveries", "task_id_of"]

logger = logging.getLogger("kiwitrio.tasks")  # a public name (docs/configuration.md#logging)

#: The header with a task's identity: set once by its sender, the same on every delivery.
TASK_ID_HEADER = "kiwitrio-task-id"


def task_id_of(delivery: Delivery) -> str | None:
    """The task's identity: its sender's id (kiwitrio 0.1), else its correlation id (kiwiPy
    senders set one on every task that wants a result); ``None`` if it has neither."""
    task_id = delivery.headers.get(TASK_ID_HEADER)
    if isinstance(task_id, str) and 0 < len(task_id) <= 255:
        return task_id
    return delivery.correlation_id or None


class Redeliveries:
    """The checks of one task queue: its delivery limit and its store of finished tasks."""

    def __init__(self, what: str, delivery_limit: int | None,
                 finished: FinishedTasks | None) -> None:
        self._what = what
        self.delivery_limit = delivery_limit
        self.finished = finished

    async def settled_before_running(
        self, delivery: Delivery,
        answer: Callable[[bytes], Awaitable[None]],
        refuse: Callable[[Exception], Awaitable[None]],
    ) -> bool:
        """True if ``delivery`` is dealt with already: past the delivery limit (its sender
        told so with ``refuse(error)``, then dead-lettered), or answered with
        ``answer(reply)`` from the store and acknowledged."""
        limit = self.delivery_limit
        if limit is not None and delivery.delivery_count > limit:
            text = (f"delivered {delivery.delivery_count} times without finishing, more than "
                    f"delivery_limit ({limit}) allows: its workers died, lost their "
                    "connection or gave it back each time")
            logger.warning("dead-lettering %s (task id %s): %s", self._what,
                           safe_repr(task_id_of(delivery)), text)
            await refuse(DeliveryLimitExceeded(f"the task was {text}; it was dead-lettered"))
            await delivery.reject(requeue=False)
            return True
        reply = await self._reply_of(delivery)
        if reply is None:
            return False
        logger.info("%s (task id %s) was finished before: answered with its reply, not run "
                    "again", self._what, safe_repr(task_id_of(delivery)))
        await answer(reply)
        return True

    async def remember(self, delivery: Delivery, reply: bytes | None) -> None:
        """Remember that the task finished with ``reply`` (``None``: no reply wanted)."""
        task_id = task_id_of(delivery)
        if self.finished is None or task_id is None:
            return
        try:
            await self.finished.remember(task_id, b"" if reply is None else reply)
        except Exception as exc:  # the task is done: a store that fails must not undo that
            logger.error("could not remember that %s (task id %s) finished: %s", self._what,
                         safe_repr(task_id), describe_error(exc))

    async def _reply_of(self, delivery: Delivery) -> bytes | None:
        task_id = task_id_of(delivery)
        if self.finished is None or task_id is None:
            return None
        try:
            return await self.finished.reply_of(task_id)
        except Exception as exc:
            logger.error("could not look up whether %s (task id %s) finished before; running "
                         "it: %s", self._what, safe_repr(task_id), describe_error(exc))
            return None
