"""What RabbitMQ's refusals mean, said plainly: a declaration that differs from the existing
queue or exchange, a login or vhost refused at connection time."""

from __future__ import annotations

import re
import urllib.parse

import aiormq
import aiormq.exceptions
from pamqp import commands as spec

from ..._errors import ConnectionRefusedByBroker, DeclarationMismatch, DeliveryFailed
from ..._urls import redact_url
from .._base import EntityNotFound, QueueInUse
from .._base import declaration_mismatch as mismatch

__all__ = ["channel_error", "declaration_mismatch", "refusal"]

_INEQUIVALENT = re.compile(
    r"inequivalent arg '(?P<argument>[^']*)' for (?P<kind>queue|exchange) '(?P<name>.*)' "
    r"in vhost '(?P<vhost>.*)': received (?P<received>.*) but current is (?P<current>.*)$",
    re.DOTALL)


def declaration_mismatch(text: str) -> DeclarationMismatch | None:
    """RabbitMQ's "inequivalent arg" refusal of a declaration, with the likely cause."""
    match = _INEQUIVALENT.search(text)
    if match is None:
        return None
    return mismatch(match["kind"], match["name"], match["argument"], match["current"],
                    match["received"])


def channel_error(exc: aiormq.exceptions.AMQPChannelError, what: str) -> DeliveryFailed:
    """The error of the Session interface for a channel error of the broker's: the same
    types as the memory broker's for the same faults."""
    if isinstance(exc, aiormq.exceptions.ChannelLockedResource):
        return QueueInUse(f"{what}: {exc}")
    if isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity):
        return EntityNotFound(f"{what}: {exc}")
    return declaration_mismatch(str(exc)) or DeliveryFailed(f"{what}: {exc}")


def refusal(url: str, exc: BaseException) -> ConnectionRefusedByBroker | None:
    """The broker's refusal of the login or the vhost, said plainly; None for other errors."""
    parts = urllib.parse.urlsplit(url)
    user = urllib.parse.unquote(parts.username or "guest")
    vhost = urllib.parse.unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    where = f"the broker at {redact_url(url)} (vhost {vhost!r})"
    if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError):
        hint = (" (RabbitMQ lets guest log in only from localhost)"
                if user == "guest" and parts.hostname not in ("localhost", "127.0.0.1", "::1")
                else "")
        return ConnectionRefusedByBroker(
            f"{where} refused the login of user {user!r}: check the user name and "
            f"password{hint}")
    if closed_at_open(exc):
        # RabbitMQ answers connection.open with connection.close (530 NOT_ALLOWED) when the
        # vhost does not exist and when the user has no permissions on it. aiormq 7 keeps
        # only the frame's repr, so the two cannot be told apart here.
        return ConnectionRefusedByBroker(
            f"{where} refused to open the vhost for user {user!r}: the vhost does not exist "
            f"(create it with rabbitmqctl add_vhost {vhost}) or the user may not use it "
            f"(rabbitmqctl set_permissions -p {vhost} {user} '.*' '.*' '.*')")
    return None


def closed_at_open(exc: BaseException) -> bool:
    if isinstance(exc, aiormq.exceptions.ConnectionClosed):
        # aiormq raises this with the close frame's code when it reads it as an answer.
        return bool(exc.args) and exc.args[0] == 530
    # aiormq 6: AMQPInternalError("Connection.OpenOk", <the close frame>).
    for arg in exc.args:
        if isinstance(arg, spec.Connection.Close):
            return arg.reply_code == 530
    # aiormq 7: the close frame came where connection.open-ok was expected.
    text = str(exc)
    return (isinstance(exc, aiormq.exceptions.InvalidFrameError)
            and "Connection.OpenOk" in text and "Connection.Close" in text)


