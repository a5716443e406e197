import trio

import kiwitrio

from .conftest import OpenComm


async def test_task_round_trip(open_comm: OpenComm) -> None:
    async with open_comm() as comm:
        await comm.add_task_subscriber(lambda _comm, task: task * 2)
        with trio.fail_after(10):
            assert await (await comm.task_send(21)) == 42


async def test_version_is_exported() -> None:
    assert kiwitrio.__version__


def test_loggers_have_public_names() -> None:
    """Log lines name documented loggers (docs/configuration.md#logging), never a module."""
    import importlib
    import logging
    import pkgutil

    import kiwitrio_sync

    for package in (kiwitrio, kiwitrio_sync):
        for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if module.name.endswith(("_prometheus", "_opentelemetry", "_trio_asyncio")):
                continue  # optional extras; their loggers are checked where they import
            importlib.import_module(module.name)
    names = [name for name in logging.Logger.manager.loggerDict
             if name.split(".")[0] in ("kiwitrio", "kiwitrio_sync")]
    private = [name for name in names if any(part.startswith("_") for part in name.split("."))]
    assert "kiwitrio.tasks" in names
    assert "kiwitrio.tracing" in names  # kiwitrio/_tracing.py's; _opentelemetry logs there
    assert private == []
