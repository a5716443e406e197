"""The exception hierarchy of kiwitrio.

Every exception kiwitrio raises on purpose derives from :class:`KiwitrioError`, so that
``except kiwitrio.KiwitrioError`` catches all of them. The names follow kiwiPy's.
"""

from __future__ import annotations

__all__ = [
    "CommunicatorClosed",
    "ConnectionFailed",
    "ConnectionRefusedByBroker",
    "DeclarationMismatch",
    "DecodeError",
    "DeliveryFailed",
    "DeliveryLimitExceeded",
    "DuplicateSubscriberIdentifier",
    "InUseError",
    "KiwitrioError",
    "QueueEmpty",
    "RemoteException",
    "SendOutcomeUnknown",
    "TaskRejected",
    "UnroutableError",
]


class KiwitrioError(Exception):
    """Base class of every error kiwitrio raises."""


class CommunicatorClosed(KiwitrioError):
    """The communicator (or the queue) was used after it was closed."""


class ConnectionFailed(KiwitrioError):
    """The broker could not be reached or the connection was lost.

    The message names the broker URL with its password removed.
    """


class ConnectionRefusedByBroker(ConnectionFailed):
    """The broker answered and refused the connection: a wrong user name or password
    (``ACCESS_REFUSED``), a vhost that does not exist or that the user may not use
    (``NOT_ALLOWED``).

    Trying again would get the same answer, so the first connection is not retried. The
    message is one line: the URL without its password, the vhost, and what to do.
    """


class SendOutcomeUnknown(ConnectionFailed):
    """The connection went (or the communicator closed) after a message was handed to it and
    before the broker confirmed it: the message may or may not have been stored.

    Distinct from "not sent": a task may still run, a broadcast may still be delivered.
    A :class:`ConnectionFailed`, so that code handling lost connections handles it too. With
    reconnection on, such a send is published again on the next connection instead (at least
    once); this is raised when there is no next connection: without a reconnect policy, or
    when the communicator closes meanwhile.
    """


class DeliveryFailed(KiwitrioError):
    """The broker did not accept a message (negative publisher confirm, closed channel...)."""


class DeclarationMismatch(DeliveryFailed):
    """A queue or exchange of that name exists on the broker with other settings
    (RabbitMQ's ``PRECONDITION_FAILED - inequivalent arg ...``).

    The message says which argument differs, both values, and the likely cause. Attributes:
    ``kind`` (``"queue"`` or ``"exchange"``), ``name``, ``argument`` (e.g. ``"auto_delete"``,
    ``"x-expires"``, ``"x-queue-type"``).
    """

    def __init__(self, message: str, *, kind: str = "", name: str = "",
                 argument: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.name = name
        self.argument = argument


class UnroutableError(DeliveryFailed):
    """The broker could not route a message to any queue.

    Raised by :meth:`~kiwitrio.Communicator.rpc_send` when nobody subscribes with that
    identifier, and by :meth:`~kiwitrio.Communicator.task_send` when the task queue
    does not exist.
    """


class InUseError(KiwitrioError):
    """A queue has consumers, or an exchange has bindings, and the operation (purge, delete)
    was asked to leave one in use alone (``force=False``, the default).

    ``kind`` is ``"queue"`` or ``"exchange"``, ``name`` its name, ``consumers`` how many
    consumers the queue had when checked (0 for an exchange).
    """

    def __init__(self, message: str, *, kind: str = "", name: str = "",
                 consumers: int = 0) -> None:
        super().__init__(message)
        self.kind = kind
        self.name = name
        self.consumers = consumers


class DeliveryLimitExceeded(KiwitrioError):
    """A task was delivered more often than its queue's ``delivery_limit`` allows without
    finishing (its workers died, lost their connection or gave it back each time): it was
    dead-lettered unrun. Its sender gets it as a :class:`RemoteException` of this type."""


class TaskRejected(KiwitrioError):
    """Raised by a task subscriber to decline a task.

    The task is offered to the communicator's next task subscriber and, when all of them
    declined, given back to the queue for another worker.
    """


class QueueEmpty(KiwitrioError):
    """:meth:`~kiwitrio.TaskQueue.next_task` found no task within its timeout."""


class DuplicateSubscriberIdentifier(KiwitrioError):
    """A subscriber with that identifier already exists (here, or for RPC anywhere)."""


class DecodeError(KiwitrioError):
    """A message body could not be decoded, or has the wrong structure."""


class RemoteException(KiwitrioError):
    """The remote subscriber raised an exception while handling the message.

    Attributes:
        remote_type: qualified name of the remote exception's class, e.g. ``"ValueError"``.
        remote_message: ``str()`` of the remote exception.
        remote_traceback: the remote traceback, formatted, or ``""``.
    """

    def __init__(self, remote_type: str, remote_message: str, remote_traceback: str = "") -> None:
        super().__init__(f"{remote_type}: {remote_message}")
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback

    def __reduce__(self) -> tuple[type[RemoteException], tuple[str, str, str]]:
        return (type(self), (self.remote_type, self.remote_message, self.remote_traceback))
