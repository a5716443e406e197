"""State shared by the message kinds of one communicator: session, nursery, codec."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from .._backends import Delivery, NegativeAck, Session
from .._codec import Decoder, Encoder
from .._errors import CommunicatorClosed, ConnectionFailed, DecodeError
from .._finished import FinishedTasks
from .._saferepr import describe_error, safe_repr, safe_str_of_exception
from ._durable import DurableQueues
from ._redelivery import task_id_of

__all__ = ["Context", "DeliveryInfo", "current_delivery"]

logger = logging.getLogger("kiwitrio.messages")  # a public name (docs/configuration.md#logging)

#: Bodies larger than this are decoded in a worker thread.
OFF_THREAD_BYTES = 64 * 1024

#: How long shutdown work (giving deliveries back) may take before it is abandoned; the
#: broker requeues whatever is left when the connection closes anyway.
SHUTDOWN_GRACE = 5.0


@dataclass(frozen=True)
class DeliveryInfo:
    """About the message a task or RPC subscriber is handling: :func:`current_delivery`."""

    #: True if this message was handed out before: its worker died, lost its connection,
    #: gave it back, or its lease expired. The work may have been partly done already.
    redelivered: bool
    correlation_id: str | None
    routing_key: str
    headers: Mapping[str, Any]
    #: How often a quorum queue handed this task out before (0 on classic queues, which do
    #: not count); past the task queue's delivery limit it is dead-lettered unrun.
    delivery_count: int = 0
    #: The task's identity, the same on every delivery (see kiwitrio.FinishedTasks).
    task_id: str | None = None


_current_delivery: contextvars.ContextVar[DeliveryInfo] = contextvars.ContextVar(
    "kiwitrio_current_delivery")


def current_delivery() -> DeliveryInfo:
    """The delivery that the calling task or RPC subscriber is handling.

    Works in async subscribers and in plain ones (worker threads inherit it). Raises
    :class:`LookupError` outside a subscriber.
    """
    return _current_delivery.get()


@contextmanager
def handling(delivery: Delivery) -> Iterator[None]:
    """Make ``delivery`` the :func:`current_delivery` for the code in the block."""
    info = DeliveryInfo(
        # Also a task that came back from an expired lease (x-death) or was handed back
        # from one ("kiwitrio-redelivered", see _leases).
        redelivered=(delivery.redelivered or "x-death" in delivery.headers
                     or bool(delivery.headers.get("kiwitrio-redelivered"))),
        correlation_id=delivery.correlation_id,
        routing_key=delivery.routing_key,
        headers=delivery.headers,
        delivery_count=delivery.delivery_count,
        task_id=task_id_of(delivery),
    )
    token = _current_delivery.set(info)
    try:
        yield
    finally:
        _current_delivery.reset(token)


@dataclass(eq=False)
class Context:
    session: Session
    #: The communicator's nursery: every background task of the communicator runs here.
    nursery: trio.Nursery
    encoder: Encoder
    decoder: Decoder
    content_type: str
    #: Passed as first argument to subscribers.
    communicator: Any
    #: Declares the communicator's exchanges again (after someone deleted one).
    redeclare_exchanges: Callable[[], Awaitable[None]]
    testing_mode: bool
    #: Larger message bodies are refused when sending and dead-lettered when received.
    max_message_size: int = 64 * 1024 * 1024
    #: A task still running after this many seconds moves onto a lease (see _leases).
    task_lease: float | None = None
    #: Replies are accepted only from these logins (the broker-checked ``user_id``), if set.
    trusted_reply_users: frozenset[str] | None = None
    closed: bool = False
    #: How the durable queues are declared (type, delivery limit, testing mode's expiry).
    durable: DurableQueues = field(default_factory=DurableQueues)
    #: Where task subscribers remember finished tasks, so as not to run them twice.
    finished_tasks: FinishedTasks | None = None
    #: Large bodies are decoded in a worker thread, one at a time (bounding the memory and
    #: the CPU that decoding takes at once, whatever the prefetch counts).
    _decoding: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(1))

    def check_open(self) -> None:
        if self.closed:
            raise CommunicatorClosed("the communicator is closed")

    def encode(self, value: Any) -> bytes:
        """Encode ``value``; :class:`TypeError` names what could not be encoded."""
        try:
            encoded = self.encoder(value)
        except TypeError:
            raise
        except Exception as exc:
            raise TypeError(f"cannot encode {type(value).__qualname__}: {exc}") from exc
        # Text encoders (kiwiPy's YAML or JSON ones) are welcome: send their text as UTF-8.
        body: bytes = encoded.encode() if isinstance(encoded, str) else encoded
        if len(body) > self.max_message_size:
            raise ValueError(f"the encoded message is {len(body)} bytes, more than "
                             f"max_message_size ({self.max_message_size})")
        return body

    async def decode(self, delivery: Delivery) -> Any:
        """Decode a delivery's body or raise :class:`DecodeError` saying why not.

        Bodies larger than :data:`OFF_THREAD_BYTES` are decoded in a worker thread, one at a
        time per communicator: the Trio thread goes on serving meanwhile. (The default
        decoder also hands the GIL back regularly on those: see kiwitrio._codec.)
        """
        body = delivery.body
        if len(body) > self.max_message_size:
            raise DecodeError(f"message of {len(body)} bytes is larger than "
                              f"max_message_size ({self.max_message_size})")
        if delivery.content_type != self.content_type:
            raise DecodeError(
                f"unexpected content type {safe_repr(delivery.content_type)} "
                f"(expected {self.content_type!r})"
            )
        try:
            if len(body) <= OFF_THREAD_BYTES:
                return self.decoder(body)
            # Abandoned if cancelled (the communicator is closing): the decoder is bounded
            # and its result is dropped.
            return await trio.to_thread.run_sync(self.decoder, body, limiter=self._decoding,
                                                 abandon_on_cancel=True)
        except DecodeError:
            raise
        except Exception as exc:
            raise DecodeError(f"cannot decode message: {describe_error(exc)}") from exc

    async def reject_visibly(self, delivery: Delivery, what: str, reason: Exception) -> None:
        """Log and dead-letter a message that cannot be handled (it is never redelivered)."""
        # Our own DecodeErrors say what was wrong without quoting the message; anything else
        # is named with its type, and its text is bounded (it may quote a hostile value).
        text = (safe_str_of_exception(reason, 500) if isinstance(reason, DecodeError)
                else describe_error(reason, 500))
        logger.error(
            "rejecting %s (routing key %r, %d bytes, correlation id %r): %s",
            what, delivery.routing_key, len(delivery.body), delivery.correlation_id, text,
        )
        await delivery.reject(requeue=False)

    async def guard(self, delivery: Delivery, what: str,
                    handle: Callable[[Delivery], Awaitable[None]]) -> None:
        """Run ``handle(delivery)``; an exception from it is this message's problem.

        The last line of defence for every handler task in the communicator's nursery: an
        error nobody foresaw (a check that a hostile value made raise) is logged once and
        the message dead-lettered, instead of tearing down the communicator. Cancellation
        passes through untouched.
        """
        try:
            await handle(delivery)
        except (CommunicatorClosed, ConnectionFailed) as exc:
            # Not the message's fault: the broker requeues what was not settled.
            logger.warning("lost the connection while handling %s: %s", what, exc)
        except Exception as exc:
            logger.error("rejecting %s (routing key %r, %d bytes, correlation id %r): "
                         "handling it failed: %s", what, delivery.routing_key,
                         len(delivery.body), delivery.correlation_id,
                         describe_error(exc, 500))
            if not delivery.settled:
                with trio.CancelScope(shield=True,
                                      deadline=trio.current_time() + SHUTDOWN_GRACE):
                    try:
                        await delivery.reject(requeue=False)
                    except (CommunicatorClosed, ConnectionFailed):
                        pass  # the broker requeued it already

    async def finish(self, delivery: Delivery, reply: Awaitable[None]) -> None:
        """Send the reply, then acknowledge: the work is done.

        Shielded, so that closing the communicator between the two cannot leave a task
        answered but unacknowledged (and so redelivered and done twice). A reply the broker
        kept refusing (``reply`` raised :class:`NegativeAck`) was not stored: the message is
        given back instead, to be handled (and answered) again, rather than acknowledged
        with its result lost.
        """
        # One scope for both: shielded from outside, and its own deadline still applies.
        with trio.CancelScope(shield=True, deadline=trio.current_time() + SHUTDOWN_GRACE):
            try:
                try:
                    await reply
                except NegativeAck as exc:
                    logger.warning("the broker refused the reply to a message (routing key "
                                   "%r, correlation id %r): giving it back, to be handled "
                                   "again: %s", delivery.routing_key, delivery.correlation_id,
                                   exc)
                    await self.give_back(delivery)
                    return
                await delivery.ack()
            except (CommunicatorClosed, ConnectionFailed) as exc:
                logger.warning("connection lost before a message was acknowledged; "
                               "the broker will deliver it again: %s", exc)

    async def give_back(self, delivery: Delivery) -> None:
        """Requeue ``delivery``; safe to call while being cancelled."""
        with trio.CancelScope(shield=True, deadline=trio.current_time() + SHUTDOWN_GRACE):
            try:
                await delivery.reject(requeue=True)
            except (CommunicatorClosed, ConnectionFailed):
                pass  # the connection is gone: the broker requeued it already
