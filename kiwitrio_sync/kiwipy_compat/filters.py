"""``kiwipy.filters``: :class:`BroadcastFilter` with kiwiPy's matching rules.

kiwiPy turns a filter string into a regular expression: ``.`` matches a dot, ``*`` any run of
characters, every other regex character keeps its meaning, and the expression is matched at
the *start* of the subject or sender (so ``"purchase"`` accepts ``"purchases"``). A compiled
regex is matched at the start as well; any other value must be equal. Several filters of one
kind accept a broadcast if any of them does; a ``None`` subject or sender is not filtered.

This filter decides in the subscriber (it is a plain callable), not on the broker, so filters
may be added at any time, as in kiwiPy. kiwitrio's own ``kiwitrio.BroadcastFilter`` matches whole
subjects and filters on the broker too; both work with either face.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

__all__ = ["BroadcastFilter"]

_Check = Callable[[Any], Any]
_TRANSLATED = {".": "[.]", "*": ".*"}


class BroadcastFilter:
    """Wraps a broadcast subscriber so that it only sees some subjects and/or senders."""

    def __init__(self, subscriber: Callable[..., Any], subject: Any = None,
                 sender: Any = None) -> None:
        self._subscriber = subscriber
        self._subject_filters: list[_Check] = []
        self._sender_filters: list[_Check] = []
        if subject is not None:
            self.add_subject_filter(subject)
        if sender is not None:
            self.add_sender_filter(sender)

    @property
    def __name__(self) -> str:
        return "BroadcastFilter"

    def __call__(self, communicator: Any, body: Any, sender: Any = None, subject: Any = None,
                 correlation_id: Any = None) -> Any:
        if self.is_filtered(sender, subject):
            return None
        return self._subscriber(communicator, body, sender, subject, correlation_id)

    def is_filtered(self, sender: Any, subject: Any) -> bool:
        """True if this broadcast is not for the subscriber."""
        return _rejects(self._subject_filters, subject) or _rejects(self._sender_filters, sender)

    def add_subject_filter(self, subject_filter: Any) -> None:
        self._subject_filters.append(_check(subject_filter))

    def add_sender_filter(self, sender_filter: Any) -> None:
        self._sender_filters.append(_check(sender_filter))


def _rejects(checks: list[_Check], value: Any) -> bool:
    if value is None or not checks:
        return False
    return not any(check(value) for check in checks)


def _check(pattern: Any) -> _Check:
    if isinstance(pattern, str):
        # A dot stands for itself, a star for any run of characters; the rest is regex.
        regex = re.compile("".join(_TRANSLATED.get(char, char) for char in pattern))
        return lambda value: isinstance(value, str) and regex.match(value) is not None
    if isinstance(pattern, re.Pattern):
        return lambda value: isinstance(value, str) and pattern.match(value) is not None
    return lambda value: bool(value == pattern)
