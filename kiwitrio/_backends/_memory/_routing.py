"""Routing keys against binding keys, per exchange type, as RabbitMQ matches them."""


from __future__ import annotations

from collections.abc import Iterable, Sequence

from .._base import (
    ExchangeType,
)

__all__ = ["_binding_matches", "_topic_matches"]


def _topic_words(key: str) -> list[str]:
    """Split a routing or binding key into words; as in RabbitMQ, ``""`` has no words at all."""
    return key.split(".") if key else []


def _topic_matches(binding_key: str, routing_key: str) -> bool:
    """RabbitMQ topic matching: ``*`` is exactly one word, ``#`` zero or more words.

    Runs the pattern as an NFA over the key's words (the set of pattern positions reachable so
    far), which stays linear where naive backtracking on several ``#`` would not.
    """
    pattern = _topic_words(binding_key)
    states = _skip_hashes(pattern, {0})
    for word in _topic_words(routing_key):
        advanced: set[int] = set()
        for position in states:
            if position == len(pattern):
                continue
            token = pattern[position]
            if token == "#":
                advanced.add(position)  # '#' swallows this word and may swallow more
            elif token in ("*", word):
                advanced.add(position + 1)
        states = _skip_hashes(pattern, advanced)
    return len(pattern) in states


def _skip_hashes(pattern: Sequence[str], states: Iterable[int]) -> set[int]:
    """Add, for each position standing on ``#``, the positions after it (``#`` matching nothing)."""
    closed: set[int] = set()
    for position in states:
        closed.add(position)
        while position < len(pattern) and pattern[position] == "#":
            position += 1
            closed.add(position)
    return closed


def _binding_matches(kind: ExchangeType, binding_key: str, routing_key: str) -> bool:
    """Whether a binding of an exchange of type ``kind`` takes a message with ``routing_key``."""
    if kind == "fanout":
        return True
    if kind == "topic":
        return _topic_matches(binding_key, routing_key)
    return binding_key == routing_key


