"""What a ``sqlite:`` URL says: the file, the login, and the timing knobs."""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass

__all__ = ["SqliteOptions"]

_SYNCHRONOUS = ("full", "normal", "extra")


@dataclass(frozen=True)
class SqliteOptions:
    """``sqlite://[login@]/abs/path.db?liveness=30&poll=1&synchronous=full``.

    - ``liveness`` (seconds): a connection silent this long is dead, its deliveries go back
      to their queues. A process that died is noticed sooner, by its doorbell (see
      :mod:`._doorbell`), within about 1.5 poll intervals.
    - ``poll`` (seconds): how often a session looks at the file without being rung.
    - ``synchronous``: SQLite's, for the commits that must reach the disk (publishes and
      declarations): ``full`` (default) survives power loss, ``normal`` only process
      crashes and clean reboots. Claims and settlements always run at ``normal``: a power
      loss may undo one, and the message is then delivered again, never lost.
    """

    path: str
    login: str = "guest"
    liveness: float = 30.0
    poll: float = 1.0
    synchronous: str = "full"

    @classmethod
    def from_url(cls, url: str) -> SqliteOptions:
        """Raises ValueError for a URL that does not name an absolute path, or bad options."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "sqlite":
            raise ValueError(f"not a sqlite:// URL: {url!r}")
        if parts.hostname or parts.port is not None or parts.password is not None:
            raise ValueError(f"a sqlite URL names a local file, sqlite:///abs/path.db: {url!r}")
        path = urllib.parse.unquote(parts.path)
        if not path.startswith("/") or path.endswith("/"):
            raise ValueError(f"a sqlite URL needs an absolute file path, sqlite:///abs/path.db: "
                             f"{url!r}")
        query = dict(urllib.parse.parse_qsl(parts.query, strict_parsing=bool(parts.query)))
        unknown = set(query) - {"liveness", "poll", "synchronous"}
        if unknown:
            raise ValueError(f"unknown sqlite URL options {sorted(unknown)}: {url!r}")
        options = cls(path=os.path.normpath(path),
                      login=urllib.parse.unquote(parts.username or "guest"),
                      liveness=_seconds(query, "liveness", 30.0),
                      poll=_seconds(query, "poll", 1.0),
                      synchronous=query.get("synchronous", "full").lower())
        if options.synchronous not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {_SYNCHRONOUS}: {url!r}")
        return options


def _seconds(query: dict[str, str], name: str, default: float) -> float:
    try:
        value = float(query.get(name, default))
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, not {query[name]!r}") from None
    if not 0 < value < 86400:
        raise ValueError(f"{name} must be between 0 and 86400 seconds, not {value}")
    return value
