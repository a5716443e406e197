"""What RabbitMQ's refusals mean, said plainly: a declaration that differs from the existing
queue or exchange, a login or vhost refused at connection time."""


from __future__ import annotations

import re
import urllib.parse

import aiormq
import aiormq.exceptions
from pamqp import commands as spec

from ..._errors import (
    ConnectionRefusedByBroker,
    DeclarationMismatch,
)
from ..._urls import redact_url

__all__ = ["declaration_mismatch", "refusal"]

_INEQUIVALENT = re.compile(
    r"inequivalent arg '(?P<argument>[^']*)' for (?P<kind>queue|exchange) '(?P<name>.*)' "
    r"in vhost '(?P<vhost>.*)': received (?P<received>.*) but current is (?P<current>.*)$",
    re.DOTALL)
#: Arguments that testing_mode sets (auto-delete exchanges, expiring queues).
_TESTING_MODE_ARGUMENTS = frozenset({"auto_delete", "x-expires"})


def declaration_mismatch(text: str) -> DeclarationMismatch | None:
    """RabbitMQ's "inequivalent arg" refusal of a declaration, with the likely cause."""
    match = _INEQUIVALENT.search(text)
    if match is None:
        return None
    argument, kind, name = match["argument"], match["kind"], match["name"]
    if argument == "x-queue-type":
        hint = ("the queue exists with another queue type (classic, quorum, stream): use "
                "the same type, or delete the queue (kiwitrio delete QUEUE) to change it")
    elif argument in _TESTING_MODE_ARGUMENTS:
        hint = ("if one side runs with testing_mode (auto-delete exchanges, expiring queues; "
                "the CLI's --testing) and the other does not, use the same testing_mode")
    else:
        hint = (f"declare it the same way everywhere, or delete the {kind} to change it: "
                "the broker never changes the arguments of an existing one")
    return DeclarationMismatch(
        f"the {kind} {name!r} exists with other settings: {argument!r} is "
        f"{match['current']} on the broker but {match['received']} here; {hint}",
        kind=kind, name=name, argument=argument)


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


