"""A broker inside the process, with the AMQP 0-9-1 semantics kiwitrio relies on.

:func:`open_memory_session` opens a :class:`~kiwitrio.backends.Session` on a broker that lives
in the current Trio run. It mimics what RabbitMQ does for the vocabulary of
:mod:`kiwitrio.backends`, so code that works against it works against RabbitMQ and vice versa:

* exchanges: the default exchange ``""``, ``direct``, ``topic`` and ``fanout``; the
  predeclared ``amq.direct``, ``amq.topic`` and ``amq.fanout``; auto-delete exchanges go away
  with their last binding;
* queues: per-queue FIFO, server-named ``amq.gen-...`` queues, exclusive queues owned by one
  session and deleted when it closes, auto-delete queues deleted when their last consumer
  goes, per-message TTL, dead-lettering with an ``x-death`` header, queue expiry
  (``x-expires``; a passive declare renews it, as on RabbitMQ);
* consumers get at most ``prefetch_count`` unsettled deliveries, round-robin;
* ``publish`` returns once the message sits in every queue it was routed to (the "confirm").

``x-max-length`` is enforced with ``x-overflow: reject-publish`` only (what kiwitrio's task
queue catalogue uses): a publish to a full queue raises NegativeAck, as RabbitMQ nacks it.
Not enforced: the other overflow behaviours (``drop-head``, RabbitMQ's default, and
``reject-publish-dlx``), ``x-max-length-bytes``, and RabbitMQ 4's refusal of transient
non-exclusive queues (kiwitrio declares none).

Errors RabbitMQ reports as channel errors raise :class:`~kiwitrio.DeliveryFailed`, of the
same types as the AMQP backend's (tests/test_backend_contract.py): EntityNotFound for
NOT_FOUND, DeclarationMismatch for an inequivalent redeclaration, QueueInUse for
RESOURCE_LOCKED; the session stays usable. Messages
are not persisted: ``durable`` and ``persistent`` are recorded or ignored, never written down.

All broker work is synchronous and happens inside the awaiting call; there are no background
tasks, so a delivery is in its consumer's channel by the time ``publish`` (or the ``ack`` that
made room for it) returns.

Modules: ``_session`` (sessions, consumers, deliveries; a URL's broker), ``_broker`` (the
broker's state and what happens to it), ``_routing`` (binding keys).
"""

from ._routing import _topic_matches
from ._session import open_memory_session

__all__ = ["_topic_matches", "open_memory_session"]
