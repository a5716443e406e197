"""Names of kiwiPy's asyncio classes, which kiwitrio does not provide."""

from __future__ import annotations

from typing import Any, NoReturn

_ADVICE = ("kiwitrio provides kiwiPy's thread communicator (kiwipy.rmq.RmqThreadCommunicator), "
           "not its asyncio one; from asyncio code use the thread communicator (its futures "
           "work with asyncio.wrap_future), or kiwitrio's Trio API")


def unavailable(name: str) -> NoReturn:
    raise NotImplementedError(f"kiwipy.rmq.{name}: {_ADVICE}")


class AsyncioOnly:
    """Stands for one of kiwiPy's asyncio classes: the name exists, instances do not."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        unavailable(type(self).__name__)
