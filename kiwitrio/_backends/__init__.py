"""The broker layer: the :class:`Session` interface, its implementations, and the factory.

- :mod:`._base`: the interface the message kinds are written against (Session, Consumer,
  Delivery, OutgoingMessage, QueueSpec...);
- :mod:`._amqp`: RabbitMQ through aio-pika (and :mod:`kiwitrio._bridge` for its asyncio);
- :mod:`._memory`: a broker inside the process, for tests and trying things out;
- :mod:`._reconnect`: a Session over successive inner sessions (ReconnectPolicy), with its
  consumers in :mod:`._resilient_consumer`;
- :mod:`._factory`: :func:`open_session`, from a URL to one of those.

Nothing above this layer imports the implementations: only this package's names.
:mod:`kiwitrio.backends` makes the factory and the interface public.
"""

# Each module's __all__ is what it offers this layer (as asyncio's package does it).
from . import _base, _factory, _policy, _reconnect
from ._base import *  # noqa: F403
from ._factory import *  # noqa: F403
from ._policy import *  # noqa: F403
from ._reconnect import *  # noqa: F403

__all__ = _base.__all__ + _factory.__all__ + _policy.__all__ + _reconnect.__all__
