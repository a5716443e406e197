"""How a connection stands (:class:`ConnectionState`) and how to (re)connect
(:class:`ReconnectPolicy`: backoff, jitter, the bounds), for :mod:`._reconnect`."""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

import tenacity
import trio

from .._errors import ConnectionFailed, ConnectionRefusedByBroker, DeliveryFailed
from .._groups import leaves_of
from .._urls import redact_url
from ._base import QueueInUse

__all__ = ["ConnectionState", "ReconnectPolicy", "failed_attempt"]

logger = logging.getLogger("kiwitrio.reconnect")  # a public name (docs/configuration.md#logging)


class ConnectionState(enum.Enum):
    """Where a communicator's connection stands."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    #: Connected, but the broker holds back publishing (a memory or disk alarm: RabbitMQ's
    #: ``connection.blocked``). Sends wait until it lifts; the caller's deadline still holds.
    BLOCKED = "blocked"
    RECONNECTING = "reconnecting"
    #: The reconnection policy gave up: the communicator raises ConnectionFailed.
    GIVEN_UP = "given up"
    CLOSED = "closed"


@dataclass(frozen=True)
class ReconnectPolicy:
    """How to (re)connect: exponential backoff with jitter, and when to give up.

    The n-th wait is ``min(max_delay, initial_delay * multiplier**n)`` plus up to ``jitter``
    seconds at random. ``startup_give_up_after`` bounds the first connection (then
    :func:`~kiwitrio.open_communicator` raises :class:`~kiwitrio.ConnectionFailed`);
    ``give_up_after`` bounds each later outage (``None``: keep trying), as does
    ``max_attempts`` if set. These bounds hold even while an attempt hangs (a listener that
    accepts TCP and never answers): an attempt running at the deadline is abandoned.
    ``connect_timeout`` bounds each attempt's connecting (TCP, TLS, AMQP handshake), and
    separately its declaring again of what the communicator had declared, after which the
    next URL is tried (``None``: only the give-up bounds apply).
    """

    initial_delay: float = 0.1
    max_delay: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.5
    startup_give_up_after: float | None = 10.0
    give_up_after: float | None = None
    max_attempts: int | None = None
    connect_timeout: float | None = 10.0

    def retrying(self, *, startup: bool, describe: Callable[[], str]) -> tenacity.AsyncRetrying:
        give_up_after = self.startup_give_up_after if startup else self.give_up_after
        stops: list[tenacity.stop.stop_base] = []
        if give_up_after is not None:
            stops.append(tenacity.stop_before_delay(give_up_after))
        if self.max_attempts is not None:
            stops.append(tenacity.stop_after_attempt(self.max_attempts))
        stop = tenacity.stop_any(*stops) if stops else tenacity.stop_never

        def log_attempt(state: tenacity.RetryCallState) -> None:
            outcome = state.outcome
            error = outcome.exception() if outcome is not None else None
            wait = state.next_action.sleep if state.next_action else 0.0
            logger.warning("connecting to %s failed (attempt %d): %s; next try in %.1f s",
                           describe(), state.attempt_number, error, wait)

        retry: tenacity.retry_base = tenacity.retry_if_exception_type(
            (ConnectionFailed, DeliveryFailed, QueueInUse, OSError))
        if startup:
            # A wrong password or a missing vhost at start is a mistake to fix, not an outage
            # to wait out. Later (a broker restarting, users being provisioned again) the
            # same answer may be passing, so an outage keeps trying.
            retry = retry & tenacity.retry_if_not_exception_type(ConnectionRefusedByBroker)
        return tenacity.AsyncRetrying(
            stop=stop,
            wait=tenacity.wait_exponential(multiplier=self.initial_delay, exp_base=self.multiplier,
                                           max=self.max_delay)
            + tenacity.wait_random(0, self.jitter),
            retry=retry,
            before_sleep=log_attempt,
            sleep=trio.sleep,
            reraise=True,
        )


def failed_attempt(url: str, group: BaseException) -> BaseException:
    """What a connection attempt that failed with an exception group failed with.

    The trio-asyncio bridge runs the attempt in nurseries of its own: a connection cut while
    its loop opens or closes can come back as a group (the attempt's error with the loop's
    own). Errors only (no Cancelled): a failed attempt, a ConnectionFailed the policy
    retries, or the refusal among them; anything else as it is.
    """
    leaves = leaves_of(group)
    if not all(isinstance(leaf, Exception) for leaf in leaves):
        return group
    refusals = [leaf for leaf in leaves if isinstance(leaf, ConnectionRefusedByBroker)]
    if refusals:
        return refusals[0]
    return ConnectionFailed(f"cannot connect to {redact_url(url)}: "
                            + "; ".join(f"{type(leaf).__name__}: {leaf}" for leaf in leaves))
