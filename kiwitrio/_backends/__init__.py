"""The broker layer: the :class:`Session` interface, its implementations, and the factory.

- :mod:`._base`: the interface the message kinds are written against (Session, Consumer,
  Delivery, OutgoingMessage, QueueSpec...);
- :mod:`._amqp`: RabbitMQ through aio-pika (and :mod:`kiwitrio._bridge` for its asyncio);
- :mod:`._memory`: a broker inside the process, for tests and trying things out;
- :mod:`._reconnect`: a Session over successive AMQP sessions (ReconnectPolicy);
- :mod:`._factory`: :func:`open_session`, from a URL to one of those.

Nothing above this layer imports the implementations: only this package's names.
:mod:`kiwitrio.backends` makes the factory and the interface public.
"""

from ._base import (
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_ROUTING_KEY,
    Consumer,
    Delivery,
    DeliveryReceiver,
    EntityNotFound,
    ExchangeType,
    NegativeAck,
    OutgoingMessage,
    QueueInUse,
    QueueSpec,
    QueueStats,
    Session,
    drain,
    is_negative_ack,
)
from ._factory import DEFAULT_CONNECT_TIMEOUT, open_session
from ._policy import ConnectionState, ReconnectPolicy
from ._reconnect import ResilientSession, open_resilient_session

__all__ = [
    "DEAD_LETTER_EXCHANGE",
    "DEAD_LETTER_ROUTING_KEY",
    "DEFAULT_CONNECT_TIMEOUT",
    "ConnectionState",
    "Consumer",
    "Delivery",
    "DeliveryReceiver",
    "EntityNotFound",
    "ExchangeType",
    "NegativeAck",
    "OutgoingMessage",
    "QueueInUse",
    "QueueSpec",
    "QueueStats",
    "ReconnectPolicy",
    "ResilientSession",
    "Session",
    "drain",
    "is_negative_ack",
    "open_resilient_session",
    "open_session",
]
