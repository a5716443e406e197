"""Reconnection: a :class:`~kiwitrio.backends.Session` that survives losing its connection.

:class:`ResilientSession` wraps the real sessions (one per connection) and hides the gaps
between them. It remembers what was declared (exchanges, queues, bindings) and who consumes
what, and replays all of it on every new connection, so subscribers come back by themselves
with their identifiers. A supervisor task reconnects with tenacity: exponential backoff with
jitter, one log line per attempt, bounds and give-up policy from :class:`ReconnectPolicy`.

While disconnected, operations wait for the next connection (bounded by the caller's own
cancel scope) and then run; a publish whose confirm never came is published again on the new
connection, so a send is reported done only once a broker confirmed it (at least once: the
message may arrive twice). Deliveries that came on a lost connection are *stale*: the broker
has requeued them, so they are dropped from the consumer's stream instead of processed.

An exclusive queue declared ``renamable`` whose name is still held when it is declared again
(RabbitMQ 4 keeps a dead node's exclusive queues) gets a fresh name on the broker, with its
bindings and consumers; callers keep using the name they declared, which the session maps.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any, TypeVar

import trio

from .._errors import (
    CommunicatorClosed,
    ConnectionFailed,
    ConnectionRefusedByBroker,
)
from .._groups import BaseExceptionGroup
from .._urls import redact_url
from ._base import (
    Consumer,
    Delivery,
    ExchangeType,
    OutgoingMessage,
    QueueInUse,
    QueueSpec,
    QueueStats,
    Session,
    names_in_place_of,
)
from ._policy import ConnectionState, ReconnectPolicy, failed_attempt
from ._resilient_consumer import ResilientConsumer

__all__ = ["ResilientSession", "open_resilient_session"]

logger = logging.getLogger("kiwitrio.reconnect")  # a public name (docs/configuration.md#logging)

T = TypeVar("T")

#: ``opener(url, connect_timeout)``: a session for ``url`` for the block; connecting (not the
#: block) takes at most ``connect_timeout`` seconds (``None``: no bound) or raises
#: ConnectionFailed. The opener bounds it itself: a cancel scope around entering the context
#: manager would be left while the manager's own scopes (trio-asyncio's loop) stay open.
SessionOpener = Callable[[str, "float | None"], AbstractAsyncContextManager[Session]]


@asynccontextmanager
async def open_resilient_session(
    urls: Sequence[str],
    opener: SessionOpener,
    policy: ReconnectPolicy,
    on_state: Callable[[ConnectionState], None] | None = None,
) -> AsyncIterator[ResilientSession]:
    """Connect (retrying per ``policy``) and keep reconnecting for the block.

    Raises :class:`~kiwitrio.ConnectionFailed` if the first connection cannot be made within
    the policy, and out of the block if a later outage outlasts it.
    """
    async with trio.open_nursery() as nursery:
        session = ResilientSession(urls, opener, policy, on_state, nursery)
        await nursery.start(session.supervise)
        try:
            yield session
        finally:
            session.closing()
            nursery.cancel_scope.cancel()


class ResilientSession(Session):
    """A session over a succession of connections; see the module docstring."""

    def __init__(self, urls: Sequence[str], opener: SessionOpener, policy: ReconnectPolicy,
                 on_state: Callable[[ConnectionState], None] | None,
                 nursery: trio.Nursery) -> None:
        if not urls:
            raise ValueError("no broker URL given")
        self._urls = list(urls)
        self._next_url = itertools.cycle(self._urls)
        self._url = self._urls[0]
        self._opener = opener
        self._policy = policy
        self._on_state = on_state
        self.nursery = nursery
        self.state = ConnectionState.CONNECTING
        self.server_properties: dict[str, Any] = {}
        self._current: Session | None = None
        self._connected = trio.Event()
        self._given_up: ConnectionFailed | None = None
        self._closed = False
        #: Bumped on every new connection: tells operations whether they raced a reconnect.
        self.generation = 0
        # What to replay on a new connection, in declaration order.
        self._exchanges: dict[str, tuple[ExchangeType, bool, bool]] = {}
        self._queues: dict[str, QueueSpec] = {}
        self._bindings: dict[tuple[str, str, str], None] = {}
        self._consumers: dict[ResilientConsumer, None] = {}
        #: Declared name -> the name on the broker, for renamable queues renamed on a
        #: reconnection; empty until a name was found held.
        self._renamed: dict[str, str] = {}

    # -- the supervisor -----------------------------------------------------------------------

    async def supervise(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                        ) -> None:
        startup = True
        while True:
            try:
                stack, inner = await self._connect(startup)
            except Exception as exc:
                error = self._give_up(exc, startup)
                if error is exc:
                    raise
                raise error from exc
            async with stack:
                self._attach(inner)
                if startup:
                    task_status.started()
                    startup = False
                reason = await inner.wait_lost()
                self._detach(reason)

    async def _connect(self, startup: bool) -> tuple[AsyncExitStack, Session]:
        self._set_state(ConnectionState.CONNECTING if startup else ConnectionState.RECONNECTING)
        describe = lambda: redact_url(self._url)  # noqa: E731
        policy = self._policy
        give_up_after = policy.startup_give_up_after if startup else policy.give_up_after
        # tenacity checks the policy between attempts only; this deadline also ends an
        # attempt that hangs past it (as a failed attempt, which tenacity then stops on).
        give_up_at = math.inf if give_up_after is None else trio.current_time() + give_up_after
        async for attempt in policy.retrying(startup=startup, describe=describe):
            with attempt:
                self._url = next(self._next_url)
                try:
                    return await self._attempt(self._url, give_up_at)
                except BaseExceptionGroup as group:
                    raise failed_attempt(self._url, group) from group
        raise AssertionError("unreachable: tenacity re-raises the last error")

    async def _attempt(self, url: str, give_up_at: float) -> tuple[AsyncExitStack, Session]:
        """One connection attempt: connect, then replay the records; each step bounded."""
        timeout = self._policy.connect_timeout

        def step_deadline() -> float:
            step = math.inf if timeout is None else trio.current_time() + timeout
            return min(step, give_up_at)

        stack = AsyncExitStack()
        try:
            connect_by = step_deadline()
            connect_timeout = (None if connect_by == math.inf
                               else max(0.0, connect_by - trio.current_time()))
            try:
                inner = await stack.enter_async_context(self._opener(url, connect_timeout))
            except ConnectionFailed:
                if trio.current_time() < connect_by:
                    raise
                # Said in the policy's terms (the cause is what _give_up reports).
                ran_out = self._ran_out(timeout, give_up_at)
                raise ConnectionFailed(f"cannot connect to {redact_url(url)}: "
                                       f"{ran_out}") from TimeoutError(ran_out)
            with trio.move_on_at(step_deadline()) as restoring:
                await self._restore(inner)
            if restoring.cancelled_caught:
                ran_out = self._ran_out(timeout, give_up_at)
                raise ConnectionFailed(f"connected to {redact_url(url)}, but declaring the "
                                       f"queues and consumers again did not finish: "
                                       f"{ran_out}") from TimeoutError(ran_out)
        except BaseException:
            with trio.CancelScope(shield=True):
                await stack.aclose()
            raise
        return stack, inner

    @staticmethod
    def _ran_out(timeout: float | None, give_up_at: float) -> str:
        if trio.current_time() >= give_up_at:
            return "the reconnection policy's time ran out during the attempt"
        return f"no answer within {timeout} s (connect_timeout)"

    async def _restore(self, inner: Session) -> None:
        for name, (type_, durable, auto_delete) in list(self._exchanges.items()):
            await inner.declare_exchange(name, type_, durable=durable, auto_delete=auto_delete)
        self._renamed.clear()  # the names are free again on a node that forgot them
        for spec in list(self._queues.values()):
            await self._declare_again(inner, spec)
        for queue, exchange, key in list(self._bindings):
            await inner.bind_queue(self.on_broker(queue), exchange, key)
        for consumer in list(self._consumers):
            await consumer.attach(inner)

    async def _declare_again(self, inner: Session, spec: QueueSpec) -> None:
        """Declare ``spec`` on a new connection; under a fresh name if its own is held."""
        assert spec.name is not None
        try:
            await inner.declare_queue(spec)
            return
        except QueueInUse as exc:
            if not spec.renamable:
                raise
            held = exc
        for fresh in names_in_place_of(spec.name):
            try:
                await inner.declare_queue(dataclasses.replace(spec, name=fresh))
            except QueueInUse as exc:
                held = exc
                continue
            self._renamed[spec.name] = fresh
            logger.warning("queue %r is still held on the broker (%s); declared %r in its "
                           "place", spec.name, held, fresh)
            return
        raise held

    def on_broker(self, queue: str) -> str:
        """The name ``queue`` (as declared through this session) has on the broker now."""
        return self._renamed.get(queue, queue)

    @property
    def blocked_reason(self) -> str | None:  # type: ignore[override]
        return None if self._current is None else self._current.blocked_reason

    def _flow_changed(self, inner: Session) -> None:
        if self.is_current(inner):
            self._set_state(ConnectionState.BLOCKED if inner.blocked_reason is not None
                            else ConnectionState.CONNECTED)

    def _attach(self, inner: Session) -> None:
        self._current = inner
        self.generation += 1
        self.server_properties = dict(inner.server_properties)
        inner.on_flow_control = lambda: self._flow_changed(inner)
        self._set_state(ConnectionState.BLOCKED if inner.blocked_reason is not None
                        else ConnectionState.CONNECTED)
        self._connected.set()
        if self.generation > 1:
            logger.warning("reconnected to %s", redact_url(self._url))

    def _detach(self, reason: BaseException) -> None:
        self._current = None
        self._connected = trio.Event()
        logger.warning("lost the connection to %s (%s); reconnecting", redact_url(self._url),
                       reason)
        self._set_state(ConnectionState.RECONNECTING)

    def _give_up(self, exc: Exception, startup: bool) -> ConnectionFailed:
        error: ConnectionFailed
        if startup and isinstance(exc, ConnectionRefusedByBroker):
            error = exc  # one line already, naming the URL and what to do
        else:
            when = "could not connect to" if startup else "gave up reconnecting to"
            # The last attempt's own error, without a second "cannot connect to URL".
            reason = exc.__cause__ if isinstance(exc, ConnectionFailed) and exc.__cause__ else exc
            error = ConnectionFailed(f"{when} {', '.join(_redacted(self._urls))}: {reason}")
        self._given_up = error
        self._set_state(ConnectionState.GIVEN_UP)
        self._connected.set()  # wake the waiters: they raise
        return error

    def _set_state(self, state: ConnectionState) -> None:
        if state is self.state:
            return
        self.state = state
        if self._on_state is not None:
            try:
                self._on_state(state)
            except Exception:
                logger.exception("connection state callback failed")

    def is_current(self, inner: Session) -> bool:
        """Whether ``inner`` is the live connection (not a lost one, and not closing)."""
        return not self._closed and self._current is inner

    def closing(self) -> None:
        self._closed = True
        self._set_state(ConnectionState.CLOSED)
        self._connected.set()

    # -- running operations across connections -----------------------------------------------

    async def current(self) -> Session:
        """The live inner session, waiting (within the caller's deadline) for one."""
        while True:
            if self._closed:
                raise CommunicatorClosed("the communicator is closed")
            if self._given_up is not None:
                raise self._given_up
            if self._current is not None:
                return self._current
            await self._connected.wait()

    async def _run(self, op: Callable[[Session], Awaitable[T]]) -> T:
        """Run ``op`` on a live connection; if that connection is lost first, on the next."""
        while True:
            inner = await self.current()
            try:
                return await op(inner)
            except (ConnectionFailed, CommunicatorClosed):
                if self._closed or self._given_up is not None:
                    raise
                if self._current is inner:
                    await inner.wait_lost()  # the supervisor is about to notice
                logger.info("operation interrupted by the connection loss; retrying")

    async def _run_and_record(self, op: Callable[[Session], Awaitable[T]],
                              record: Callable[[], None]) -> T:
        while True:
            generation = self.generation
            result = await self._run(op)
            record()  # no checkpoint since op: a reconnect replays it from now on
            if generation == self.generation:
                return result
            # A reconnect may have replayed the records before this one: do it again.

    # -- Session --------------------------------------------------------------------------------

    async def declare_exchange(self, name: str, type: ExchangeType, *, durable: bool,
                               auto_delete: bool) -> None:
        await self._run_and_record(
            lambda s: s.declare_exchange(name, type, durable=durable, auto_delete=auto_delete),
            lambda: self._exchanges.__setitem__(name, (type, durable, auto_delete)),
        )

    async def declare_queue(self, spec: QueueSpec) -> str:
        if not spec.name:
            raise ValueError("queues must be named to survive reconnection")
        name = spec.name
        if not spec.redeclare:
            return await self._run(lambda s: s.declare_queue(spec))
        first = self.generation

        async def declare(inner: Session) -> None:
            if self.generation == first:
                await inner.declare_queue(spec)
            else:  # interrupted by a reconnection: as a replay would (the old one may hold it)
                await self._declare_again(inner, spec)

        await self._run_and_record(declare, lambda: self._queues.__setitem__(name, spec))
        return name

    async def delete_queue(self, name: str, *, if_unused: bool = False) -> int:
        count = await self._run(
            lambda s: s.delete_queue(self.on_broker(name), if_unused=if_unused))
        self._forget_queue(name)
        return count

    async def purge_queue(self, name: str) -> int:
        return await self._run(lambda s: s.purge_queue(self.on_broker(name)))

    async def inspect_queue(self, name: str) -> QueueStats | None:
        return await self._run(lambda s: s.inspect_queue(self.on_broker(name)))

    async def delete_exchange(self, name: str, *, if_unused: bool = False) -> None:
        await self._run(lambda s: s.delete_exchange(name, if_unused=if_unused))
        self._exchanges.pop(name, None)

    async def bind_queue(self, queue: str, exchange: str, routing_key: str) -> None:
        await self._run_and_record(
            lambda s: s.bind_queue(self.on_broker(queue), exchange, routing_key),
            lambda: self._bindings.__setitem__((queue, exchange, routing_key), None),
        )

    async def unbind_queue(self, queue: str, exchange: str, routing_key: str) -> None:
        self._bindings.pop((queue, exchange, routing_key), None)
        await self._run(lambda s: s.unbind_queue(self.on_broker(queue), exchange, routing_key))

    async def publish(self, exchange: str, routing_key: str, message: OutgoingMessage, *,
                      mandatory: bool) -> None:
        await self._run(lambda s: s.publish(exchange, routing_key, message, mandatory=mandatory))

    async def get(self, queue: str) -> Delivery | None:
        return await self._run(lambda s: s.get(self.on_broker(queue)))

    async def consume(self, queue: str, *, prefetch_count: int,
                      exclusive: bool = False) -> Consumer:
        consumer = ResilientConsumer(self, queue, prefetch_count, exclusive)
        await self._run_and_record(consumer.attach,
                                   lambda: self._consumers.__setitem__(consumer, None))
        return consumer

    def forget_consumer(self, consumer: ResilientConsumer) -> None:
        self._consumers.pop(consumer, None)
        spec = self._queues.get(consumer.queue)
        if spec is not None and spec.auto_delete and not any(
                c.queue == consumer.queue for c in self._consumers):
            # The broker deletes an auto-delete queue with its last consumer: so do we.
            self._forget_queue(consumer.queue)

    def _forget_queue(self, name: str) -> None:
        self._queues.pop(name, None)
        self._renamed.pop(name, None)
        for binding in [b for b in self._bindings if b[0] == name]:
            del self._bindings[binding]

    async def aclose(self) -> None:
        self.closing()
        if self._current is not None:
            await self._current.aclose()

    async def wait_lost(self) -> BaseException:
        await trio.sleep_forever()  # losing a connection is this class's business, not ours
        raise AssertionError("unreachable")


def _redacted(urls: Sequence[str]) -> list[str]:
    return [redact_url(url) for url in urls]
