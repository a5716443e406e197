"""The operator's calls of the blocking communicators: inspect, ping, shutdown, queues.

The blocking twins of :meth:`kiwitrio.Communicator.inspect` and its neighbours, shared by
both blocking faces through :class:`~kiwitrio_sync._communicator.BlockingBase`. Each blocks
until the core call returns in the portal thread, and raises what it raises.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

import kiwitrio

__all__ = ["Operations"]


class Operations:
    """Mixed into BlockingBase, which provides ``_core`` and ``_call``."""

    @property
    def _core(self) -> kiwitrio.Communicator:
        raise NotImplementedError  # BlockingBase's

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        raise NotImplementedError  # BlockingBase's

    # -- see and steer the live communicators --------------------------------------------------

    @property
    def identity(self) -> str:
        """See :attr:`kiwitrio.Communicator.identity`."""
        return self._core.identity

    def inspect(self, timeout: float = 1.5) -> list[kiwitrio.CommunicatorInfo]:
        """See :meth:`kiwitrio.Communicator.inspect` (blocks ``timeout`` seconds)."""
        infos: list[kiwitrio.CommunicatorInfo] = self._call(self._core.inspect, timeout)
        return infos

    def ping(self, timeout: float = 1.5) -> list[str]:
        """See :meth:`kiwitrio.Communicator.ping` (blocks ``timeout`` seconds)."""
        identities: list[str] = self._call(self._core.ping, timeout)
        return identities

    def control_shutdown(self, target: str | None = None,
                         timeout: float = 1.5) -> dict[str, bool]:
        """See :meth:`kiwitrio.Communicator.control_shutdown` (blocks ``timeout`` seconds)."""
        answers: dict[str, bool] = self._call(self._core.control_shutdown, target, timeout)
        return answers

    def on_control_shutdown(self, hook: Callable[[], None] | None) -> None:
        """See :meth:`kiwitrio.Communicator.on_control_shutdown`; here ``hook()`` runs in a
        thread of its own, so it may block, and may call :meth:`close`."""
        if hook is None:
            self._core.on_control_shutdown(None)
            return

        def start_hook() -> None:  # in the portal thread, which must not block
            threading.Thread(target=hook, name="kiwitrio-control-shutdown", daemon=True).start()

        self._core.on_control_shutdown(start_hook)

    # -- queue administration -------------------------------------------------------------------

    def list_task_queues(self) -> list[kiwitrio.QueueStatus]:
        """See :meth:`kiwitrio.Communicator.list_task_queues`."""
        statuses: list[kiwitrio.QueueStatus] = self._call(self._core.list_task_queues)
        return statuses

    def purge_queue(self, name: str, *, force: bool = False) -> int:
        """See :meth:`kiwitrio.Communicator.purge_queue`."""
        count: int = self._call(functools.partial(self._core.purge_queue, name, force=force))
        return count

    def delete_queue(self, name: str, *, force: bool = False) -> dict[str, int]:
        """See :meth:`kiwitrio.Communicator.delete_queue`."""
        deleted: dict[str, int] = self._call(
            functools.partial(self._core.delete_queue, name, force=force))
        return deleted

    def delete_exchange(self, name: str, *, force: bool = False) -> None:
        """See :meth:`kiwitrio.Communicator.delete_exchange`."""
        self._call(functools.partial(self._core.delete_exchange, name, force=force))
