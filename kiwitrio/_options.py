"""The communicator's options: as the type front ends pass them through
(:class:`CommunicatorOptions`), and as the message kinds use them, checked (:class:`Settings`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypedDict

from ._backends import ConnectionState, ReconnectPolicy
from ._bridge import BridgeChoice
from ._codec import Decoder, Encoder
from ._finished import FinishedTasks
from ._kinds._durable import DurableQueues, QueueType

__all__ = ["CommunicatorOptions", "Settings", "logins"]


class CommunicatorOptions(TypedDict, total=False):
    """The keyword options of :func:`open_communicator`, as one type: front ends that take
    them through (``kiwitrio_sync.connect(url, **options)``) are checked against it, and a
    test keeps it equal to :func:`open_communicator`'s parameters."""

    message_exchange: str
    task_exchange: str
    task_queue: str
    task_prefetch_count: int
    encoder: Encoder
    decoder: Decoder
    content_type: str | None
    testing_mode: bool
    max_message_size: int
    task_lease: float | None
    heartbeat: float
    reconnect: ReconnectPolicy | None
    on_connection_state: Callable[[ConnectionState], None] | None
    bridge: BridgeChoice
    trusted_reply_users: Iterable[str] | None
    queue_type: QueueType | None
    delivery_limit: int | None
    finished_tasks: FinishedTasks | None


@dataclass(frozen=True)
class Settings:
    """The options the communicator and its message kinds use, checked and resolved
    (``content_type`` chosen, ``trusted_reply_users`` a set), grouped by what they decide."""

    # Where messages go, and whether what is declared cleans up after itself.
    message_exchange: str
    task_exchange: str
    task_queue: str
    testing_mode: bool
    # How bodies are written and read.
    encoder: Encoder
    decoder: Decoder
    content_type: str
    max_message_size: int
    # How tasks are taken, and whose replies are believed.
    task_prefetch_count: int
    task_lease: float | None
    trusted_reply_users: frozenset[str] | None
    # How durable queues are declared (queue type, delivery limit, testing mode's expiry),
    # and where finished tasks are remembered.
    durable: DurableQueues
    finished_tasks: FinishedTasks | None


def logins(users: Iterable[str]) -> frozenset[str]:
    """``trusted_reply_users`` checked: a collection of login names."""
    if isinstance(users, str):
        raise TypeError("trusted_reply_users takes a collection of logins, not one string")
    names = frozenset(users)
    if not all(isinstance(user, str) for user in names):
        raise TypeError("trusted_reply_users must be logins (str), not "
                        f"{sorted(map(repr, names))}")
    return names
