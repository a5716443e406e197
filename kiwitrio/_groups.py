"""Exception groups around context managers that run the caller's block inside a nursery.

Trio wraps whatever escapes a nursery in a ``BaseExceptionGroup``. When the block of one of our
context managers raises, the caller should get that exception back, not a group around it
(``open_communicator`` would otherwise turn a plain ``ValueError`` into a group).
"""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    import builtins

    BaseExceptionGroup = builtins.BaseExceptionGroup
else:  # pragma: no cover - Python 3.10
    from exceptiongroup import BaseExceptionGroup

__all__ = ["BaseExceptionGroup", "leaves_of", "single_leaf"]


def leaves_of(exc: BaseException) -> list[BaseException]:
    """The non-group exceptions inside ``exc`` (however nested), in order; ``[exc]`` if it is
    not a group."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves_of(inner)]
    return [exc]


def single_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The only non-group exception inside ``group`` (however nested), or ``None``."""
    leaves = leaves_of(group)
    return leaves[0] if len(leaves) == 1 else None
