"""The Communicator: tasks, RPC and broadcasts over one broker connection."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from ._backends import ConnectionState, ReconnectPolicy, Session, open_session
from ._bridge import BridgeChoice, resolve_bridge
from ._codec import CBOR_CONTENT_TYPE, Decoder, Encoder, cbor_decode, cbor_encode
from ._errors import CommunicatorClosed, ConnectionFailed, DeliveryFailed, KiwitrioError
from ._finished import FinishedTasks
from ._groups import BaseExceptionGroup, single_leaf
from ._kinds import _admin
from ._kinds._admin import QueueStatus
from ._kinds._broadcast import BroadcastHub, BroadcastSubscriber
from ._kinds._context import SHUTDOWN_GRACE, Context
from ._kinds._control import MAX_FIELD, CommunicatorInfo, ControlError, ControlHub, parse_info
from ._kinds._durable import DurableQueues, QueueType
from ._kinds._replies import ReplyRouter, ResultHandle
from ._kinds._rpc import RpcHub, RpcSubscriber
from ._kinds._tasks import TaskQueue, TaskSubscriber, dead_letter_exchange_name
from ._options import CommunicatorOptions, Settings, logins
from ._saferepr import safe_repr

__all__ = ["DEFAULT_URL", "Communicator", "CommunicatorOptions", "open_communicator"]

logger = logging.getLogger("kiwitrio")  # a public name (docs/configuration.md#logging)

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_MESSAGE_EXCHANGE = "kiwitrio.messages"
DEFAULT_TASK_EXCHANGE = "kiwitrio.tasks"
DEFAULT_TASK_QUEUE = "kiwitrio.tasks"
DEFAULT_TASK_PREFETCH = 1
DEFAULT_RECONNECT = ReconnectPolicy()
#: Well under RabbitMQ's default consumer timeout (30 minutes).
DEFAULT_TASK_LEASE = 10 * 60.0


@asynccontextmanager
async def open_communicator(
    url: str | Sequence[str] = DEFAULT_URL,
    *,
    message_exchange: str = DEFAULT_MESSAGE_EXCHANGE,
    task_exchange: str = DEFAULT_TASK_EXCHANGE,
    task_queue: str = DEFAULT_TASK_QUEUE,
    task_prefetch_count: int = DEFAULT_TASK_PREFETCH,
    encoder: Encoder = cbor_encode,
    decoder: Decoder = cbor_decode,
    content_type: str | None = None,
    testing_mode: bool = False,
    max_message_size: int = 64 * 1024 * 1024,
    task_lease: float | None = DEFAULT_TASK_LEASE,
    heartbeat: float = 10.0,
    reconnect: ReconnectPolicy | None = DEFAULT_RECONNECT,
    on_connection_state: Callable[[ConnectionState], None] | None = None,
    bridge: BridgeChoice = "auto",
    trusted_reply_users: Iterable[str] | None = None,
    queue_type: QueueType | None = None,
    delivery_limit: int | None = None,
    finished_tasks: FinishedTasks | None = None,
) -> AsyncIterator[Communicator]:
    """Connect to a broker and yield a :class:`Communicator` for the block.

    ``url`` is an ``amqp://`` (or ``amqps://``) URL, or several (nodes of a cluster, tried in
    turn), or ``memory://[name]`` for the in-process broker (communicators opened with the same
    memory URL in one Trio run share it).

    A task still running after ``task_lease`` seconds is moved off the broker's delivery
    clock onto a lease, so that the broker's consumer timeout (30 minutes by default) cannot
    hand it to a second worker; keep ``task_lease`` below the broker's ``consumer_timeout``
    (``None`` turns leases off).

    A lost connection is detected by heartbeats (every ``heartbeat`` seconds) and repaired
    according to ``reconnect`` (``None``: do not reconnect; calls then fail with
    :class:`~kiwitrio.ConnectionFailed`). Subscribers come back by themselves; sends made
    meanwhile wait for the connection. ``on_connection_state`` is called with each new
    :class:`ConnectionState`. If an outage outlasts the policy, the block is cancelled and
    ``ConnectionFailed`` raised from it.

    ``bridge`` chooses how aio-pika's asyncio code runs: ``"thread"``, a private asyncio
    loop in a thread of kiwitrio's own that leaves the process's asyncio untouched;
    ``"trio-asyncio"``, trio-asyncio's loop in the Trio thread (Python < 3.14, and it
    patches asyncio for the whole process); ``"auto"`` (default) takes ``"trio-asyncio"``
    only when the program has imported trio_asyncio already, else ``"thread"``. See
    docs/design.md.

    Every message kiwitrio publishes carries its connection's login as ``user_id``, which
    RabbitMQ checks (it refuses a ``user_id`` other than the publisher's own). With
    ``trusted_reply_users`` (logins), a reply from anyone else, or without a ``user_id``, is
    dropped with a warning and the caller keeps waiting for the genuine one; see "Who can do
    what" on the reliability page.

    ``encoder``/``decoder`` default to CBOR; ``content_type`` labels what the encoder makes
    (default ``application/cbor`` for CBOR, ``application/octet-stream`` otherwise) and
    messages with another content type are rejected, as are bodies larger than
    ``max_message_size`` bytes (sending one raises :class:`ValueError`). ``testing_mode`` makes
    exchanges auto-delete and queues expire once unused, so that tests leave nothing behind.

    ``queue_type="quorum"`` declares the durable queues (task queues, their dead-letter and
    lease queues, reply queues) as quorum queues, replicated over the nodes of a cluster; the
    default, ``None``, declares no type, which is the broker's default (classic) and what
    queues made by kiwiPy or an earlier kiwitrio have: a queue's type cannot change, so a
    declaration of another type is refused (:class:`~kiwitrio.DeclarationMismatch`). On quorum
    queues a task is redelivered at most ``delivery_limit`` times (default 20, as RabbitMQ
    4), then dead-lettered with a log line; ``current_delivery().delivery_count`` says how
    often it was delivered before. See docs/deployment.md.

    With ``finished_tasks`` (a :class:`~kiwitrio.FinishedTasks` store, such as
    :class:`~kiwitrio.SqliteFinishedTasks` shared by the workers of one host), a task
    subscriber remembers each task's reply before acknowledging it, and a task that comes
    back after it finished (its acknowledgement was lost, or its sender published it again)
    is answered with that reply instead of running again.

    Leaving the block stops consuming, gives tasks still being processed back to the queue,
    fails pending results with :class:`~kiwitrio.CommunicatorClosed` and closes the
    connection. Raises :class:`~kiwitrio.ConnectionFailed` if the broker cannot be reached.
    """
    # Refuse bad options before connecting, with the exception the caller expects.
    if task_prefetch_count < 1:
        raise ValueError(f"task_prefetch_count must be at least 1, not {task_prefetch_count}")
    if task_lease is not None and task_lease <= 0:
        raise ValueError(f"task_lease must be positive (or None), not {task_lease}")
    resolve_bridge(bridge)  # a bad or unavailable choice fails here, before connecting
    if content_type is None:
        content_type = CBOR_CONTENT_TYPE if encoder is cbor_encode else "application/octet-stream"
    durable = DurableQueues.checked(queue_type, delivery_limit, testing_mode)
    settings = Settings(
        message_exchange=message_exchange, task_exchange=task_exchange, task_queue=task_queue,
        task_prefetch_count=task_prefetch_count, encoder=encoder, decoder=decoder,
        content_type=content_type, testing_mode=testing_mode,
        max_message_size=max_message_size, task_lease=task_lease,
        trusted_reply_users=(None if trusted_reply_users is None
                             else logins(trusted_reply_users)),
        durable=durable, finished_tasks=finished_tasks,
    )
    body_error: BaseException | None = None
    try:
        async with open_session(url, heartbeat=heartbeat, reconnect=reconnect,
                                on_state=on_connection_state, bridge=bridge) as session, \
                _serve(session, settings) as comm:
            try:
                yield comm
            except BaseException as exc:
                body_error = exc
                raise
    except BaseExceptionGroup as group:
        # The nursery wrapped the block's own exception (or the connection's failure):
        # hand it back unwrapped.
        leaf = single_leaf(group)
        if leaf is not None and (leaf is body_error or isinstance(leaf, KiwitrioError)):
            raise leaf from None
        raise


@asynccontextmanager
async def _serve(session: Session, settings: Settings) -> AsyncIterator[Communicator]:
    """Run a communicator on ``session``: its nursery, and clean-up at the end."""
    comm: Communicator | None = None
    try:
        async with trio.open_nursery() as nursery:
            comm = Communicator(session, nursery, settings)
            try:
                await comm._declare()
                yield comm
            finally:
                comm._begin_shut_down()
        # The nursery has exited: every subscriber has finished its message or given it back.
    finally:
        # Also when the block raised. The connection closes after this, and the broker
        # requeues whatever is still unacknowledged.
        if comm is not None:
            await comm._clean_up(settings.testing_mode)


class Communicator:
    """Tasks, RPC and broadcasts over one broker connection.

    Made by :func:`open_communicator`; every method is a Trio-flavoured coroutine and raises
    :class:`~kiwitrio.CommunicatorClosed` once the communicator is closed. Subscribers may be
    async functions (run in the communicator's nursery) or plain functions (run in a worker
    thread); either may return an awaitable or a ``concurrent.futures.Future``.
    """

    def __init__(self, session: Session, nursery: trio.Nursery, settings: Settings) -> None:
        self._ctx = ctx = Context(
            session=session, nursery=nursery, encoder=settings.encoder,
            decoder=settings.decoder, content_type=settings.content_type, communicator=self,
            redeclare_exchanges=self._declare_exchanges, testing_mode=settings.testing_mode,
            max_message_size=settings.max_message_size, task_lease=settings.task_lease,
            trusted_reply_users=settings.trusted_reply_users, durable=settings.durable,
            finished_tasks=settings.finished_tasks)
        message_exchange = settings.message_exchange
        self._message_exchange = message_exchange
        self._task_exchange = settings.task_exchange
        self._replies = ReplyRouter(ctx, prefix=message_exchange)
        self._rpc = RpcHub(ctx, self._replies, exchange=message_exchange)
        self._broadcasts = BroadcastHub(ctx, exchange=message_exchange)
        self._control = ControlHub(ctx, self._replies, message_exchange=message_exchange,
                                   describe=self._describe)
        self._task_queues: dict[str, TaskQueue] = {}
        self._default_queue = self._new_task_queue(settings.task_queue,
                                                   settings.task_prefetch_count)

    # -- lifecycle --------------------------------------------------------------------------

    async def _declare(self) -> None:
        await self._declare_exchanges()
        await self._default_queue.declare()
        await self._control.start()

    async def _declare_exchanges(self) -> None:
        session, auto_delete = self._ctx.session, self._ctx.testing_mode
        await session.declare_exchange(self._message_exchange, "topic", durable=True,
                                       auto_delete=auto_delete)
        await session.declare_exchange(self._task_exchange, "direct", durable=True,
                                       auto_delete=auto_delete)
        await session.declare_exchange(dead_letter_exchange_name(self._task_exchange), "direct",
                                       durable=True, auto_delete=auto_delete)
        await session.declare_exchange(self._control.exchange, "fanout", durable=True,
                                       auto_delete=auto_delete)

    def _begin_shut_down(self) -> None:
        """Refuse new calls, fail pending results, and cancel all background work.

        Cancelled subscribers give their messages back to the queue (shielded, bounded by
        SHUTDOWN_GRACE) before the communicator's nursery exits.
        """
        self._ctx.closed = True
        self._replies.close()
        self._ctx.nursery.cancel_scope.cancel()

    async def _clean_up(self, testing_mode: bool) -> None:
        """Delete what only this communicator used, before the connection closes."""
        with trio.CancelScope(shield=True), trio.move_on_after(SHUTDOWN_GRACE):
            try:
                for queue in self._task_queues.values():
                    await queue.settle_pulled()
                await self._replies.delete_queue()
                if testing_mode:
                    await self._delete_unused_exchanges()
            except (ConnectionFailed, CommunicatorClosed) as exc:
                logger.info("could not clean up at close: %s", exc)

    async def _delete_unused_exchanges(self) -> None:
        # An auto-delete exchange goes only when its last binding is removed, so one that was
        # never bound (a message exchange nobody subscribed to) would stay forever.
        for exchange in (self._message_exchange, self._task_exchange,
                         dead_letter_exchange_name(self._task_exchange),
                         self._control.exchange):
            try:
                await self._ctx.session.delete_exchange(exchange, if_unused=True)
            except DeliveryFailed:
                pass  # still in use (bound): it auto-deletes later

    def is_closed(self) -> bool:
        return self._ctx.closed

    @property
    def connection_state(self) -> ConnectionState:
        """``CONNECTED``, ``BLOCKED`` (the broker holds back publishing), ``RECONNECTING``...,
        ``CLOSED`` once the communicator is closed."""
        if self._ctx.closed:
            return ConnectionState.CLOSED
        session = self._ctx.session
        state: ConnectionState = getattr(session, "state", ConnectionState.CONNECTED)
        if state is ConnectionState.CONNECTED and session.blocked_reason is not None:
            return ConnectionState.BLOCKED
        return state

    @property
    def server_properties(self) -> Mapping[str, Any]:
        """What the broker said about itself; ``server_properties["version"]`` and so on."""
        return self._ctx.session.server_properties

    # -- control ----------------------------------------------------------------------------

    @property
    def identity(self) -> str:
        """This communicator's name in :meth:`inspect` answers: ``host:pid:random``."""
        return self._control.identity

    # The timeout is how long answers are collected, not a deadline: it always runs out.
    async def inspect(self, timeout: float = 1.5) -> list[CommunicatorInfo]:  # noqa: ASYNC109
        """Ask every live communicator on the broker (this one excepted) what it is doing.

        Returns one :class:`~kiwitrio.CommunicatorInfo` per communicator that answered within
        ``timeout`` seconds (always waits that long: nobody knows how many will answer), by
        host and pid. Answers that are not what a kiwitrio communicator sends are logged and
        left out. Communicators share the control exchange through their message exchange.
        """
        if not timeout > 0 or timeout == float("inf"):
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout}")
        infos = []
        for answer in await self._control.ask("inspect", timeout):
            try:
                infos.append(parse_info(answer))
            except ControlError as exc:
                logger.warning("ignoring an inspect answer: %s", exc)
        return sorted(infos, key=lambda info: (info.host, info.pid, info.identity))

    async def ping(self, timeout: float = 1.5) -> list[str]:  # noqa: ASYNC109 (see inspect)
        """The :attr:`identity` of every live communicator (this one excepted) that answered
        within ``timeout`` seconds."""
        if not timeout > 0 or timeout == float("inf"):
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout}")
        identities = []
        for answer in await self._control.ask("ping", timeout):
            identity = answer.get("identity") if isinstance(answer, dict) else None
            if isinstance(identity, str) and len(identity) <= MAX_FIELD:
                identities.append(identity)
            else:
                logger.warning("ignoring a ping answer: %s", safe_repr(answer, 80))
        return sorted(identities)

    def on_control_shutdown(self, hook: Callable[[], None] | None) -> None:
        """Call ``hook()`` (in the Trio thread) when ``kiwitrio control shutdown`` (or
        :meth:`control_shutdown`) asks this communicator to stop; ``None`` removes it.

        Opt-in: without a hook, shutdown requests are answered "not accepted" and ignored.
        ``kiwitrio worker`` registers one that stops it as SIGTERM does. Anyone who can
        publish on the vhost can send the request, as they can send tasks.
        """
        self._control.on_shutdown = hook

    async def control_shutdown(self, target: str | None = None,
                               timeout: float = 1.5,  # noqa: ASYNC109 (see inspect)
                               ) -> dict[str, bool]:
        """Ask the communicators named by ``target`` (a pid or :attr:`identity`; ``None``:
        all) to shut down; returns {identity: whether it accepted} for those that answered
        within ``timeout`` seconds."""
        if not timeout > 0 or timeout == float("inf"):
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout}")
        answers: dict[str, bool] = {}
        for answer in await self._control.ask("shutdown", timeout, target):
            identity = answer.get("identity") if isinstance(answer, dict) else None
            accepted = answer.get("accepted") if isinstance(answer, dict) else None
            if (isinstance(identity, str) and len(identity) <= MAX_FIELD
                    and isinstance(accepted, bool)):
                answers[identity] = accepted
            else:
                logger.warning("ignoring a shutdown answer: %s", safe_repr(answer, 80))
        return answers

    # -- queue administration (kiwitrio/_kinds/_admin.py; the CLI's status, purge, delete) ------

    async def list_task_queues(self) -> list[QueueStatus]:
        """Every task queue on the task exchange (kiwitrio's catalogue of them, and this
        communicator's own), with how many tasks wait and how many dead letters it has."""
        self._ctx.check_open()
        return await _admin.task_queue_status(self._ctx.session, self._task_exchange,
                                              also=self._task_queues)

    async def purge_queue(self, name: str, *, force: bool = False) -> int:
        """Drop the waiting messages of queue ``name``; returns how many. Raises
        :class:`~kiwitrio.InUseError` if it has consumers, unless ``force``."""
        self._ctx.check_open()
        return await _admin.purge_queue(self._ctx.session, name, force=force)

    async def delete_queue(self, name: str, *, force: bool = False) -> dict[str, int]:
        """Delete queue ``name`` (a task queue with its dead-letter queue); returns {queue:
        messages it held}. Raises :class:`~kiwitrio.InUseError` if one has consumers (this
        communicator's count), unless ``force``."""
        self._ctx.check_open()
        return await _admin.delete_queue(self._ctx.session, self._task_exchange, name,
                                         force=force)

    async def delete_exchange(self, name: str, *, force: bool = False) -> None:
        """Delete exchange ``name``; raises :class:`~kiwitrio.InUseError` if queues are bound
        to it, unless ``force``."""
        self._ctx.check_open()
        await _admin.delete_exchange(self._ctx.session, name, force=force)

    def _describe(self) -> dict[str, Any]:
        queues = list(self._task_queues.values())
        return {
            "rpc_subscribers": self._rpc.identifiers(),
            "task_queues": [queue.name for queue in queues if queue.consuming],
            "in_flight": [task for queue in queues for task in queue.in_flight()],
        }

    # -- tasks ------------------------------------------------------------------------------

    def _new_task_queue(self, name: str, prefetch_count: int) -> TaskQueue:
        queue = TaskQueue(self._ctx, self._replies, name=name, exchange=self._task_exchange,
                          prefetch_count=prefetch_count)
        self._task_queues[name] = queue
        return queue

    @property
    def default_queue(self) -> TaskQueue:
        """The default task queue (``task_queue`` of :func:`open_communicator`), which
        :meth:`task_send` and :meth:`add_task_subscriber` use."""
        return self._default_queue

    async def task_queue(self, name: str, prefetch_count: int | None = None, *,
                         queue_type: QueueType | None = None,
                         delivery_limit: int | None = None) -> TaskQueue:
        """The durable task queue ``name`` (declared if new), with the same task methods.

        ``prefetch_count`` (default: the communicator's ``task_prefetch_count``) is how many
        tasks its subscribers may work on at once; ``queue_type`` and ``delivery_limit``
        (default: the communicator's) as for :func:`open_communicator`. Asking again for a
        queue already opened here, with other settings, raises :class:`ValueError`.
        """
        self._ctx.check_open()
        durable = self._ctx.durable.overridden(queue_type, delivery_limit)
        if name in self._task_queues:
            queue = self._task_queues[name]
            if (queue_type is not None or delivery_limit is not None) and \
                    queue.durable != durable:
                raise ValueError(f"the task queue {name!r} is open here already, as "
                                 f"{queue.durable.queue_type or 'the default type'} with "
                                 f"delivery_limit {queue.durable.limit}")
            return queue
        queue = TaskQueue(self._ctx, self._replies, name=name, exchange=self._task_exchange,
                          prefetch_count=prefetch_count or self._default_queue.prefetch_count,
                          durable=durable)
        await queue.declare()
        return self._task_queues.setdefault(name, queue)

    async def task_send(self, task: Any, no_reply: bool = False) -> ResultHandle:
        """Send a task to the default task queue; see :meth:`TaskQueue.task_send`."""
        return await self._default_queue.task_send(task, no_reply=no_reply)

    async def add_task_subscriber(self, subscriber: TaskSubscriber,
                                  identifier: Any = None, *,
                                  pending_replies: bool = False) -> Any:
        """Work on tasks of the default queue; see :meth:`TaskQueue.add_task_subscriber`."""
        return await self._default_queue.add_task_subscriber(
            subscriber, identifier, pending_replies=pending_replies)

    async def remove_task_subscriber(self, identifier: Any) -> None:
        await self._default_queue.remove_task_subscriber(identifier)

    # -- RPC --------------------------------------------------------------------------------

    async def add_rpc_subscriber(self, subscriber: RpcSubscriber, identifier: str, *,
                                 pending_replies: bool = False) -> str:
        """Answer RPCs sent to ``identifier`` with ``subscriber(communicator, msg)``.

        Raises :class:`~kiwitrio.DuplicateSubscriberIdentifier` if any communicator on the
        broker already subscribes with that identifier. With ``pending_replies``, the caller
        is sent a "pending" reply each time the subscriber's outcome turns out to be a future
        still to be waited for (kiwiPy's protocol; see :attr:`ResultHandle.pending_replies`).
        """
        return await self._rpc.add(subscriber, identifier, pending_replies=pending_replies)

    async def remove_rpc_subscriber(self, identifier: str) -> None:
        await self._rpc.remove(identifier)

    async def rpc_send(self, recipient_id: str, msg: Any) -> ResultHandle:
        """Call the RPC subscriber ``recipient_id``; ``await`` the handle for its answer.

        Raises :class:`~kiwitrio.UnroutableError` at once if nobody subscribes with that
        identifier. The handle raises :class:`~kiwitrio.RemoteException` if the subscriber
        raised. Bound the wait with ``trio.fail_after``.
        """
        return await self._rpc.send(recipient_id, msg)

    # -- broadcasts -------------------------------------------------------------------------

    async def add_broadcast_subscriber(self, subscriber: BroadcastSubscriber,
                                       identifier: Any = None, *, ordered: bool = False) -> Any:
        """Call ``subscriber(communicator, body, sender, subject, correlation_id)`` for
        broadcasts (wrap it in a :class:`~kiwitrio.BroadcastFilter` to filter them).

        Subscribers are called concurrently, several broadcasts at once. With ``ordered``,
        this subscriber is instead called with one broadcast at a time, in the order they
        arrived (as kiwiPy did); while it is busy, up to 64 more wait for it, then the
        communicator's broadcasts wait.
        """
        return await self._broadcasts.add(subscriber, identifier, ordered=ordered)

    async def remove_broadcast_subscriber(self, identifier: Any) -> None:
        await self._broadcasts.remove(identifier)

    async def broadcast_send(self, body: Any, sender: Any = None, subject: Any = None,
                             correlation_id: Any = None) -> None:
        """Send a broadcast to every matching subscriber; returns once the broker has it.

        A subscriber whose queue is being deleted meanwhile (its communicator is closing) may
        miss it; RabbitMQ 4 then nacks the broadcast, which is not an error here.
        """
        await self._broadcasts.send(body, sender, subject, correlation_id)
