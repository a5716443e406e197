"""The control channel: every communicator answers ``inspect`` and ``ping``.

Each communicator, at open, consumes an exclusive, auto-deleting queue bound to the *control
exchange*, a fanout exchange of its own (``<message exchange>.control``). Control requests are
published there with ``reply_to`` (the asker's reply queue) and a ``correlation_id``; every
communicator answers with a reply envelope, and the asker collects all the replies to that
correlation id until its timeout.

A separate exchange, not a subject on the message exchange: a user's broadcast subscriber
that filters on ``*`` (bound ``#``) would otherwise receive control requests too.

Requests are untrusted input: the body is decoded with the communicator's bounded decoder,
must be a small mapping naming a known command, and anything else is dead-lettered (logged
once, never answered). Answers are bounded (at most :data:`MAX_LISTED` entries per list),
and so are the replies the asker accepts (:func:`parse_info`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import socket
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import trio

from .._backends import Consumer, Delivery, OutgoingMessage, QueueSpec
from .._errors import DecodeError, KiwitrioError
from .._saferepr import safe_repr
from . import _pipeline as pipeline
from ._context import Context
from ._envelopes import result_envelope
from ._replies import ReplyRouter

__all__ = ["CommunicatorInfo", "ControlHub", "InFlightTask", "control_exchange_name"]

logger = logging.getLogger("kiwitrio.control")  # a public name (docs/configuration.md#logging)

COMMANDS = ("inspect", "ping", "shutdown")
#: Requests handled at once by one communicator's control listener.
CONTROL_PREFETCH = 8
#: Control requests not consumed within this time are dropped by the broker: an inspect
#: asked while a communicator is away is of no use to anyone later.
CONTROL_TTL_MS = 10_000
#: Longest list (RPC identifiers, task queues, tasks in flight) one answer carries.
MAX_LISTED = 1000
#: Longest str field in an answer, in characters (an identifier, a queue name, a task id).
MAX_FIELD = 512
#: Most answers one request collects (a hostile flood ends there).
MAX_ANSWERS = 10_000


def control_exchange_name(message_exchange: str) -> str:
    return f"{message_exchange}.control"


@dataclass(frozen=True)
class InFlightTask:
    """A task a communicator holds (a subscriber works on it, or it was pulled)."""

    #: The task queue it came from.
    queue: str
    #: The task's id (``current_delivery().task_id``): its sender's correlation id, or for a
    #: task sent with ``no_reply`` an id of its own; the same on every delivery.
    task_id: str
    #: Seconds since this communicator took it.
    age: float
    #: True once it was moved onto a lease (it ran longer than ``task_lease``).
    leased: bool

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class CommunicatorInfo:
    """What one live communicator said about itself (see :meth:`Communicator.inspect`)."""

    #: Unique per communicator: ``host:pid:random``.
    identity: str
    host: str
    pid: int
    #: Its RPC subscribers' identifiers.
    rpc_subscribers: tuple[str, ...]
    #: The task queues it consumes (it has task subscribers on them).
    task_queues: tuple[str, ...]
    #: The tasks it holds now.
    in_flight: tuple[InFlightTask, ...]

    def as_dict(self) -> dict[str, Any]:
        """A plain dict (JSON-ready), as ``kiwitrio inspect --json`` prints it."""
        return {"identity": self.identity, "host": self.host, "pid": self.pid,
                "rpc_subscribers": list(self.rpc_subscribers),
                "task_queues": list(self.task_queues),
                "in_flight": [task.as_dict() for task in self.in_flight]}


class ControlError(KiwitrioError):
    """A control answer that is not what a kiwitrio communicator sends."""


def new_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _bounded(values: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for value in values:
        if len(out) >= MAX_LISTED:
            break
        out.append(value)
    return out


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_FIELD:
        raise ControlError(f"{what} is not a str of at most {MAX_FIELD} characters: "
                           f"{safe_repr(value, 80)}")
    return value


def _texts(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_LISTED:
        raise ControlError(f"{what} is not a list of at most {MAX_LISTED}")
    return tuple(_text(item, what) for item in value)


def _in_flight(value: Any) -> InFlightTask:
    if not isinstance(value, dict):
        raise ControlError(f"a task in flight is not a mapping: {safe_repr(value, 80)}")
    age, leased = value.get("age"), value.get("leased")
    # bool is an int: refused as an age; a float must be a real, finite number.
    if (not isinstance(age, (int, float)) or isinstance(age, bool) or not math.isfinite(age)
            or not isinstance(leased, bool)):
        raise ControlError(f"a task in flight with a bad age or lease flag: "
                           f"{safe_repr(value, 80)}")
    return InFlightTask(_text(value.get("queue"), "a queue"),
                        _text(value.get("task_id"), "a task id"), float(age), leased)


def parse_info(value: Any) -> CommunicatorInfo:
    """Check an ``inspect`` answer field by field; :class:`ControlError` if anything is off."""
    if not isinstance(value, dict):
        raise ControlError(f"an answer that is not a mapping: {safe_repr(value, 80)}")
    pid = value.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 <= pid < 2**63:
        raise ControlError(f"an answer with a bad pid: {safe_repr(pid, 80)}")
    tasks = value.get("in_flight")
    if not isinstance(tasks, list) or len(tasks) > MAX_LISTED:
        raise ControlError(f"in_flight is not a list of at most {MAX_LISTED}")
    return CommunicatorInfo(
        identity=_text(value.get("identity"), "the identity"),
        host=_text(value.get("host"), "the host"), pid=pid,
        rpc_subscribers=_texts(value.get("rpc_subscribers"), "an RPC identifier"),
        task_queues=_texts(value.get("task_queues"), "a task queue"),
        in_flight=tuple(_in_flight(task) for task in tasks),
    )


def parse_request(body: Any) -> tuple[str, str | None]:
    """The command and target (a pid or identity, or None: everyone) of a control request,
    or :class:`DecodeError` (it gets dead-lettered)."""
    if not isinstance(body, dict) or len(body) > 8:
        raise DecodeError(f"not a control request: {safe_repr(body, 80)}")
    command, target = body.get("command"), body.get("target")
    if command not in COMMANDS:
        raise DecodeError(f"unknown control command {safe_repr(command, 80)}")
    if target is not None and not (isinstance(target, str) and len(target) <= MAX_FIELD):
        raise DecodeError(f"a control target that is not a short str: {safe_repr(target, 80)}")
    return str(command), target


def is_target(identity: str, target: str | None) -> bool:
    """Whether ``target`` (None: everyone; a pid; an identity ``host:pid:random``) names the
    communicator ``identity``."""
    if target is None:
        return True
    parts = identity.split(":")
    return target == identity or (len(parts) >= 3 and parts[-2] == target)


class ControlHub:
    """One communicator's control listener, and asking every communicator."""

    def __init__(self, ctx: Context, replies: ReplyRouter, *, message_exchange: str,
                 describe: Callable[[], dict[str, Any]]) -> None:
        self._ctx = ctx
        self._replies = replies
        self.exchange = control_exchange_name(message_exchange)
        self._describe = describe
        self.identity = new_identity()
        self._queue = f"{self.exchange}.{uuid.uuid4().hex}"
        #: Called on a shutdown request (None: such requests are answered, and ignored).
        self.on_shutdown: Callable[[], None] | None = None

    async def start(self) -> None:
        """Listen for control requests (the exchange is declared with the others)."""
        session = self._ctx.session
        # Renamable: nothing addresses it by name, and RabbitMQ 4 can hold the name for good
        # after the node it was on died (see QueueSpec.renamable).
        queue = await session.declare_queue(QueueSpec(self._queue, exclusive=True,
                                                      auto_delete=True, renamable=True))
        await session.bind_queue(queue, self.exchange, "")
        consumer = await session.consume(queue, prefetch_count=CONTROL_PREFETCH)
        self._ctx.nursery.start_soon(self._serve, consumer, name="kiwitrio control")

    async def _serve(self, consumer: Consumer) -> None:
        await pipeline.serve(self._ctx, consumer, "control request", self._handle,
                             self._reject, parse=parse_request)

    async def _reject(self, delivery: Delivery, exc: DecodeError) -> None:
        await self._ctx.reject_visibly(delivery, "control request", exc)

    async def _handle(self, delivery: Delivery, request: tuple[str, str | None]) -> None:
        command, target = request
        if not is_target(self.identity, target):
            await delivery.ack()  # for someone else
            return
        answer: dict[str, Any] = (self.info() if command == "inspect"
                                  else {"identity": self.identity})
        if command == "shutdown":
            answer["accepted"] = self._shut_down()
        await self._ctx.finish(delivery, self._replies.send(delivery, result_envelope(answer)))

    def _shut_down(self) -> bool:
        """Run the shutdown hook, if there is one; whether it was run without error."""
        if self.on_shutdown is None:
            logger.info("ignoring a control shutdown request: no on_control_shutdown hook")
            return False
        logger.warning("control shutdown requested")
        try:
            self.on_shutdown()
        except Exception:
            logger.exception("the on_control_shutdown hook raised")
            return False
        return True

    def info(self) -> dict[str, Any]:
        """This communicator's inspect answer, with every list bounded."""
        described = self._describe()
        return {
            "identity": self.identity, "host": socket.gethostname(), "pid": os.getpid(),
            "rpc_subscribers": _bounded(described["rpc_subscribers"]),
            "task_queues": _bounded(described["task_queues"]),
            "in_flight": [task.as_dict() for task in _bounded(described["in_flight"])],
        }

    async def ask(self, command: str, collect_for: float, target: str | None = None,
                  ) -> list[Any]:
        """Send ``command`` to every communicator; the answers that came within
        ``collect_for`` seconds (this communicator's own excepted)."""
        self._ctx.check_open()
        reply_to, correlation_id, answers = await self._replies.collect(MAX_ANSWERS)
        try:
            message = OutgoingMessage(self._ctx.encode({"command": command, "target": target}),
                                      self._ctx.content_type, correlation_id=correlation_id,
                                      reply_to=reply_to, expiration_ms=CONTROL_TTL_MS)
            await self._ctx.session.publish(self.exchange, "", message, mandatory=False)
            collected: list[Any] = []
            with trio.move_on_after(collect_for):
                async for answer in answers:
                    collected.append(answer)
            return [answer for answer in collected
                    if not (isinstance(answer, dict) and answer.get("identity") == self.identity)]
        finally:
            self._replies.stop_collecting(correlation_id)
