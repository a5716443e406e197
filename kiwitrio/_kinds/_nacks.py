"""Publishing again what the broker refused while a queue was unavailable for a moment.

A quorum queue whose leader's node has just died refuses what is routed to it (a negative
publisher confirm, "unavailable") until its other members have elected a new leader: about
a second on a three-node RabbitMQ 3.10 cluster here (tests/faults/test_cluster.py), where the
replies of every task finished meanwhile were nacked, logged and acknowledged, and so lost.
A task, a task's result and a lease's copy each go to one queue, so publishing such a message
again cannot reach anyone twice: they are published again, after a growing pause, for a
bounded time; broadcasts (nacked when one of many subscribers' queues is being deleted) and
RPC calls (nacked when the recipient is gone: an error is due at once) are not.

The broker does not say why it refused (AMQP 0-9-1 has no reason in ``Basic.Nack``), so a
queue that is full (``x-max-length`` with ``reject-publish``) is tried again too, and its
refusal raised once the time is up.
"""

from __future__ import annotations

import logging

import trio

from .._backends import OutgoingMessage, Session, is_negative_ack
from .._errors import DeliveryFailed
from .._saferepr import safe_repr

__all__ = ["publish_until_taken"]

logger = logging.getLogger("kiwitrio.messages")  # a public name (docs/configuration.md#logging)

#: The first pause before publishing a refused message again; each one doubles, up to the
#: longest.
FIRST_PAUSE = 0.05
LONGEST_PAUSE = 1.0


async def publish_until_taken(session: Session, exchange: str, routing_key: str,
                              message: OutgoingMessage, *, within: float, what: str) -> None:
    """Publish ``message`` (mandatory); while the broker nacks it, publish it again after a
    pause, for up to ``within`` seconds; then raise the last refusal
    (:class:`~kiwitrio.backends.NegativeAck`). Every other error is raised at once.

    ``what`` names the message in the log line said on the first refusal. Cancelling the
    call abandons it; the message may or may not have been stored by then.
    """
    give_up_at = trio.current_time() + within
    pause = FIRST_PAUSE
    refusals = 0
    while True:
        try:
            await session.publish(exchange, routing_key, message, mandatory=True)
        except DeliveryFailed as exc:
            if not is_negative_ack(exc) or trio.current_time() + pause > give_up_at:
                if refusals:
                    logger.warning("the broker still refused %s after %d tries; giving up",
                                   what, refusals + 1)
                raise
            refusals += 1
            if refusals == 1:
                logger.warning("the broker refused %s (routing key %s; a queue unavailable "
                               "while its node fails over?); publishing it again for up to "
                               "%.0f s", what, safe_repr(routing_key, 120), within)
            await trio.sleep(pause)
            pause = min(pause * 2, LONGEST_PAUSE)
            continue
        if refusals:
            logger.info("the broker took %s after %d refusals", what, refusals)
        return
