"""The blocking communicator and the async one offer the same calls with the same parameters,
and kiwitrio_sync takes the options of open_communicator: every difference is listed here, on
purpose, and any other one fails."""

from __future__ import annotations

import inspect
from typing import Any

import kiwitrio
import kiwitrio_sync

#: Calls only one side has, and why.
ONLY_ASYNC: dict[str, str] = {}
ONLY_SYNC = {"close": "the async communicator closes when its `async with` block ends"}
#: Calls whose parameters differ, and why.
DIFFERENT_PARAMETERS = {
    "task_queue": "kiwiPy's signature: task_queue(queue_name, prefetch_size=0, "
                  "prefetch_count=0), 0 meaning the communicator's default",
    "add_rpc_subscriber": "kiwiPy's: the identifier may be left out (a unique one is made); "
                          "pending replies are the kiwiPy face's (RmqThreadCommunicator)",
    "add_task_subscriber": "pending replies are the kiwiPy face's (RmqThreadCommunicator)",
}


def _public(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")}


def _parameters(function: Any) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default)
            for p in inspect.signature(function).parameters.values()]


def test_the_same_calls_on_both_sides() -> None:
    async_names = _public(kiwitrio.Communicator)
    sync_names = _public(kiwitrio_sync.Communicator)
    assert async_names - sync_names == set(ONLY_ASYNC)
    assert sync_names - async_names == set(ONLY_SYNC)


def test_the_same_parameters_and_defaults() -> None:
    differing = []
    for name in sorted(_public(kiwitrio.Communicator) & _public(kiwitrio_sync.Communicator)):
        ours, theirs = (getattr(kiwitrio.Communicator, name),
                        getattr(kiwitrio_sync.Communicator, name))
        if isinstance(ours, property) or not callable(ours):
            assert isinstance(theirs, property) == isinstance(ours, property), name
            continue
        if _parameters(ours) != _parameters(theirs):
            differing.append(name)
    assert differing == sorted(DIFFERENT_PARAMETERS)


def test_connect_takes_exactly_the_options_of_open_communicator() -> None:
    options = {name: p.annotation for name, p in
               inspect.signature(kiwitrio.open_communicator).parameters.items()
               if p.kind is inspect.Parameter.KEYWORD_ONLY}
    # (TypedDict keeps the postponed annotations as forward references: compare their text.)
    typed = {name: getattr(hint, "__forward_arg__", hint)
             for name, hint in kiwitrio.CommunicatorOptions.__annotations__.items()}
    assert typed == options
    for blocking in (kiwitrio_sync.connect, kiwitrio_sync.Communicator):
        parameters = inspect.signature(blocking).parameters
        assert parameters["options"].annotation == "Unpack[kiwitrio.CommunicatorOptions]"
        assert (parameters["url"].annotation, parameters["url"].default) == (
            inspect.signature(kiwitrio.open_communicator).parameters["url"].annotation,
            kiwitrio.DEFAULT_URL)
