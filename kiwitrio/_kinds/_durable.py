"""How the durable queues kiwitrio owns are declared: their queue type, the task queues'
delivery limit, and testing mode's expiry.

Task queues, their dead-letter queues, lease queues and reply queues are durable and become
quorum queues with ``queue_type="quorum"`` (replicated over a cluster's nodes, so that they
survive losing one). Exclusive and auto-delete queues (RPC, broadcasts, control) cannot be
quorum queues and stay classic. The catalogue of task queues stays classic too: reading it
hands entries out and back, which a quorum queue would count as failed deliveries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, get_args

__all__ = ["DEFAULT_DELIVERY_LIMIT", "DurableQueues", "QueueType"]

#: The queue types kiwitrio can declare its durable queues as.
QueueType = Literal["classic", "quorum"]

#: A task on a quorum queue is redelivered at most this many times unless told otherwise
#: (RabbitMQ 4's own default for quorum queues).
DEFAULT_DELIVERY_LIMIT = 20

#: How long (ms) a quorum queue keeps the messages it handed to a consumer whose node it lost
#: before it gives them to others (``x-consumer-disconnected-timeout``; RabbitMQ 4 waits 60 s
#: by default, in case the node comes back; RabbitMQ 3 ignores the argument). kiwitrio's
#: clients move to another node within two heartbeats, so waiting longer only holds up the
#: tasks and results that consumer had; a node that does come back finds them redelivered
#: (at least once: its acknowledgements fail).
CONSUMER_DISCONNECTED_TIMEOUT_MS = 10_000

#: Arguments of durable queues in testing mode: they expire once unused for a minute.
TESTING_ARGUMENTS: Mapping[str, Any] = {"x-expires": 60_000}


@dataclass(frozen=True)
class DurableQueues:
    """The declaration policy of one communicator's (or one task queue's) durable queues.

    ``queue_type`` ``None`` declares no type: the broker's default (classic, unless the
    vhost sets another). ``delivery_limit`` (quorum queues only; ``None``:
    :data:`DEFAULT_DELIVERY_LIMIT`) is how many times a task may be redelivered.
    """

    queue_type: QueueType | None = None
    delivery_limit: int | None = None
    testing_arguments: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def checked(cls, queue_type: str | None, delivery_limit: int | None,
                testing_mode: bool) -> DurableQueues:
        """The policy for these options; :class:`ValueError` for options that cannot work."""
        return cls(testing_arguments=TESTING_ARGUMENTS if testing_mode else {}).overridden(
            queue_type, delivery_limit)

    def overridden(self, queue_type: str | None = None,
                   delivery_limit: int | None = None) -> DurableQueues:
        """This policy with a task queue's own ``queue_type`` and ``delivery_limit`` (each
        ``None``: keep this policy's, but a queue made classic keeps no limit); checked."""
        chosen = self.queue_type if queue_type is None else _queue_type(queue_type)
        limit = delivery_limit
        if limit is None and chosen == "quorum":
            limit = self.delivery_limit
        if limit is not None:
            if type(limit) is not int or limit < 0:
                raise ValueError(f"delivery_limit must be an int of 0 or more, not {limit!r}")
            if chosen != "quorum":
                raise ValueError("delivery_limit needs queue_type='quorum': classic queues do "
                                 "not count deliveries")
        return replace(self, queue_type=chosen, delivery_limit=limit)

    @property
    def limit(self) -> int | None:
        """How many times a task may be redelivered; ``None``: no limit (classic queues)."""
        if self.queue_type != "quorum":
            return None
        return DEFAULT_DELIVERY_LIMIT if self.delivery_limit is None else self.delivery_limit

    def arguments(self, *, dead_letters: bool = False) -> dict[str, Any]:
        """The arguments of a durable queue; ``dead_letters``: it has a dead-letter exchange."""
        arguments = dict(self.testing_arguments)
        if self.queue_type is not None:
            arguments["x-queue-type"] = self.queue_type
        if self.queue_type == "quorum":
            arguments["x-consumer-disconnected-timeout"] = CONSUMER_DISCONNECTED_TIMEOUT_MS
        if self.queue_type == "quorum" and dead_letters:
            # At-least-once dead-lettering: a letter leaves the queue only once its target
            # queue confirmed it (a lease's task going back, a poison task going to the
            # dead-letter queue), not at once as by default. RabbitMQ requires reject-publish.
            arguments["x-dead-letter-strategy"] = "at-least-once"
            arguments["x-overflow"] = "reject-publish"
        return arguments

    def task_queue_arguments(self) -> dict[str, Any]:
        """The arguments of a task queue (it dead-letters; a quorum one counts deliveries)."""
        arguments = self.arguments(dead_letters=True)
        limit = self.limit
        if limit is not None:
            # kiwitrio dead-letters a task past its limit itself, saying so in the log (see
            # _kinds/_tasks.py); the broker's own limit, one more, only acts if kiwitrio
            # could not (its consumer died while holding that very delivery).
            arguments["x-delivery-limit"] = limit + 1
        return arguments


def _queue_type(queue_type: str) -> QueueType:
    if queue_type == "stream":
        raise ValueError("queue_type='stream' cannot hold tasks: a stream keeps every message "
                         "for every consumer; use 'quorum' (replicated) or 'classic'")
    if queue_type not in get_args(QueueType):
        raise ValueError(f"queue_type must be 'classic', 'quorum' or None, not {queue_type!r}")
    return queue_type  # type: ignore[return-value]
