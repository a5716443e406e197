"""Broker URLs in messages and logs."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = ["BROKER_SCHEMES", "check_broker_scheme", "check_broker_url", "redact_url"]

#: The URL schemes open_communicator accepts.
BROKER_SCHEMES = ("amqp", "amqps", "memory", "sqlite")


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = netloc[0].split(":", 1)[0] + ":***"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{netloc[1]}"))


def check_broker_url(url: str) -> None:
    """Raise ValueError, naming ``url`` without its password, if it cannot be parsed.

    Checked before connecting: otherwise a typo (``amqp://host:567x/``) is only found by
    each connection attempt in turn, and reported as a broker that cannot be reached.
    """
    try:
        urlsplit(url).port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ValueError(f"bad broker URL {_redact_unparsed(url)}: {exc}") from None


def check_broker_scheme(url: str) -> None:
    """Raise ValueError, naming ``url`` without its password, unless it is one of
    :data:`BROKER_SCHEMES`."""
    if url.partition(":")[0] not in BROKER_SCHEMES:
        raise ValueError(f"unsupported broker URL {_redact_unparsed(url)!r}: use amqp://, "
                         "amqps://, memory:// or sqlite:///abs/path.db")


def _redact_unparsed(url: str) -> str:
    """:func:`redact_url`, also for a URL that urlsplit refuses (then all before ``@`` goes)."""
    try:
        return redact_url(url)
    except ValueError:
        scheme, sep, rest = url.partition("://")
        if "@" in rest:
            rest = "***@" + rest.rsplit("@", 1)[1]
        return f"{scheme}{sep}{rest}"
