"""The public names: each package's ``__all__`` lists exactly what it exports, everything
listed exists, and the version is the installed distribution's."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect

import pytest

import kiwitrio

PUBLIC_MODULES = ["kiwitrio", "kiwitrio.backends", "kiwitrio.lowlevel", "kiwitrio_sync"]


#: Classes a public module imports for its own annotations, not to export them.
IMPORTED_FOR_HINTS = {"kiwitrio.lowlevel": {"Communicator", "Session"}}


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_lists_exactly_the_public_names(name: str) -> None:
    module = importlib.import_module(name)
    assert len(set(module.__all__)) == len(module.__all__), "a name is listed twice"
    assert [n for n in module.__all__ if not hasattr(module, n)] == []
    # A class or function of kiwitrio's that a public module holds under a public name is
    # in its __all__ (or listed above as imported for annotations).
    ours = {n for n, value in vars(module).items()
            if not n.startswith("_") and (inspect.isclass(value) or inspect.isfunction(value))
            and getattr(value, "__module__", "").startswith(("kiwitrio", "kiwitrio_sync"))}
    forgotten = ours - set(module.__all__) - IMPORTED_FOR_HINTS.get(name, set())
    assert forgotten == set(), f"{name} holds {sorted(forgotten)} without exporting them"


def test_every_exported_class_and_function_is_kiwitrios_own() -> None:
    for name in kiwitrio.__all__:
        value = getattr(kiwitrio, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert value.__module__.startswith("kiwitrio"), (name, value.__module__)


def test_version_is_the_distributions() -> None:
    assert kiwitrio.__version__ == importlib.metadata.version("kiwitrio")
