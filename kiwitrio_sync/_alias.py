"""Making ``import kiwipy`` resolve to :mod:`kiwitrio_sync.kiwipy_compat`."""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

__all__ = ["install_kiwipy_alias", "remove_kiwipy_alias"]

_COMPAT = "kiwitrio_sync.kiwipy_compat"
#: kiwiPy's modules, each provided by the compatibility module of the same name.
_SUBMODULES = (
    "",
    ".communicate",
    ".communications",
    ".exceptions",
    ".filters",
    ".futures",
    ".local",
    ".utils",
    ".rmq",
    ".rmq.communicator",
    ".rmq.defaults",
    ".rmq.tasks",
    ".rmq.threadcomms",
)


def install_kiwipy_alias() -> ModuleType:
    """Make ``import kiwipy`` (and ``kiwipy.rmq``, ``kiwipy.futures``...) give kiwitrio's
    compatibility package, for code written against kiwiPy 0.9, such as plumpy and AiiDA.

    Call it once, before anything imports kiwipy: at the top of the program (for AiiDA, before
    plumpy or aiida.engine are imported), or in ``sitecustomize``. Calling it again is a no-op.
    Returns the ``kiwipy`` module. Raises :class:`RuntimeError` if the real kiwiPy was
    imported already: the objects made from it would stay kiwiPy's.
    """
    present = sys.modules.get("kiwipy")
    compat = importlib.import_module(_COMPAT)
    if present is compat:
        return compat
    if present is not None:
        raise RuntimeError(
            f"kiwipy was imported already (from {getattr(present, '__file__', present)!r}); "
            "call kiwitrio_sync.install_kiwipy_alias() before anything imports kiwipy")
    for suffix in _SUBMODULES:
        sys.modules["kiwipy" + suffix] = importlib.import_module(_COMPAT + suffix)
    return compat


def remove_kiwipy_alias() -> None:
    """Undo :func:`install_kiwipy_alias`: ``kiwipy`` names leave ``sys.modules`` (modules that
    imported it keep what they got)."""
    for suffix in _SUBMODULES:
        module = sys.modules.get("kiwipy" + suffix)
        if module is not None and module.__name__ == _COMPAT + suffix:
            del sys.modules["kiwipy" + suffix]
