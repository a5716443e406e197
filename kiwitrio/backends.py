"""The broker layer, public: open a :class:`Session` for a URL, and the interface it has.

A communicator is built on one session; :func:`open_session` gives one without the
communicator, for tools that look after a broker without taking part (``kiwitrio status``,
``purge`` and ``delete`` use it, as does the pytest plugin to clean up), and the interface is
what a further backend implements. It is AMQP-shaped and Trio-flavoured; see the design page
(docs/design.md, "The backend interface").

Provisional: the interface may still change before kiwitrio 1.0.
"""

from ._backends import (
    ConnectionState,
    Consumer,
    Delivery,
    DeliveryReceiver,
    ExchangeType,
    OutgoingMessage,
    QueueSpec,
    QueueStats,
    ReconnectPolicy,
    ResilientSession,
    Session,
    open_session,
)

__all__ = [
    "ConnectionState",
    "Consumer",
    "Delivery",
    "DeliveryReceiver",
    "ExchangeType",
    "OutgoingMessage",
    "QueueSpec",
    "QueueStats",
    "ReconnectPolicy",
    "ResilientSession",
    "Session",
    "open_session",
]
