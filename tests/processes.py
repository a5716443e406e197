"""Stopping the child processes that tests start (worker processes, fault-suite workers)."""

from __future__ import annotations

import trio


class StoppableProcess:
    """A ``trio.Process`` that is sent SIGTERM at most once, then reaped."""

    process: trio.Process

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self._terminated = False

    def terminate(self) -> None:
        """Send SIGTERM, once: a second one could arrive after the process stopped handling
        signals and kill it."""
        if not self._terminated and self.process.poll() is None:
            self._terminated = True
            self.process.terminate()

    async def stop(self, grace: float) -> int:
        """SIGTERM, then SIGKILL after ``grace`` seconds; reap and close the pipes.

        Safe to repeat and to call while being cancelled. Returns the exit status.
        """
        with trio.CancelScope(shield=True):
            if self.process.poll() is None:
                self.terminate()
                with trio.move_on_after(grace):
                    await self.process.wait()
                if self.process.poll() is None:
                    self.process.kill()
                await self.process.wait()
            for stream in (self.process.stdin, self.process.stdout):
                if stream is not None:
                    await stream.aclose()
        assert self.process.returncode is not None
        return self.process.returncode
