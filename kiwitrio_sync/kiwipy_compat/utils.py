"""``kiwipy.utils``: :class:`EventHelper`, a set of listeners told of events."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

__all__ = ["EventHelper"]

logger = logging.getLogger(__name__)


class EventHelper:
    """Listeners of one type; :meth:`fire_event` calls the same-named method on each."""

    def __init__(self, listener_type: type) -> None:
        if listener_type is None:
            raise ValueError("a listener type is needed")
        self._listener_type = listener_type
        self._listeners: set[Any] = set()

    def add_listener(self, listener: Any) -> None:
        if not isinstance(listener, self._listener_type):
            raise TypeError(f"{listener!r} is not a {self._listener_type.__qualname__}")
        self._listeners.add(listener)

    def remove_listener(self, listener: Any) -> None:
        self._listeners.discard(listener)

    def remove_all_listeners(self) -> None:
        self._listeners.clear()

    @property
    def listeners(self) -> set[Any]:
        return self._listeners

    def fire_event(self, event_function: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Call ``listener.<event_function.__name__>(*args, **kwargs)`` on every listener;
        an exception from one is logged, and the others are still called."""
        if event_function is None:
            raise ValueError("an event method is needed")
        for listener in list(self._listeners):
            try:
                getattr(listener, event_function.__name__)(*args, **kwargs)
            except Exception:
                logger.exception("listener %r raised", listener)
