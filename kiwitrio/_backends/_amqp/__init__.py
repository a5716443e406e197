"""The RabbitMQ backend: :class:`~kiwitrio.backends.Session` over aio-pika.

Everything here that touches aio-pika or aiormq runs in asyncio context, reached through the
bridge's crossings (:mod:`kiwitrio._bridge`): Trio code awaits an asyncio coroutine with
``bridge.run``, starts one without waiting with ``bridge.start_in_asyncio``, calls a plain
function there with ``bridge.call_soon_in_asyncio``, and asyncio callbacks hand data back with
``bridge.call_in_trio``. Which thread each side runs in is the
bridge's business, so no method here touches an asyncio object from Trio code or a Trio object
from asyncio code; each says in a comment which side it runs on. aio-pika sets up the
connection and channels; the per-message hot paths (publish, deliver, ack) use the aiormq
channel underneath to save a wrapper task per message.

Channels: one with publisher confirms for publishing, one for declarations (a failed
declaration closes its channel, so it is reopened on demand), one for ``basic.get``, and one
per consumer, so that each consumer has its own prefetch window and closing one never
requeues another's deliveries.

Modules: ``_session`` (the connection, its channels, the Session operations), ``_consumer``
(deliveries and consumers), ``_refusals`` (what the broker's refusals mean),
``_asyncio_side`` (aiormq hooks and coroutines run by the bridge).
"""

from ._refusals import declaration_mismatch
from ._session import open_amqp_session

__all__ = ["declaration_mismatch", "open_amqp_session"]
