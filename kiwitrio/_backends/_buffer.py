"""The delivery buffer every consumer has: a bounded stream of deliveries, and a way to take
back what nobody received.

A consumer puts deliveries in; the caller reads :attr:`DeliveryBuffer.deliveries`. When the
consumer stops, the deliveries still in the buffer are its to give back to the broker, even
if the caller closed its receiving end (which would otherwise discard them): the buffer
keeps a second receiving end of its own for that.
"""

from __future__ import annotations

import trio

from ._base import Delivery

__all__ = ["DeliveryBuffer"]


class DeliveryBuffer:
    """Holds at most ``size`` deliveries (the consumer's prefetch count)."""

    def __init__(self, size: int) -> None:
        self._send, self.deliveries = trio.open_memory_channel[Delivery](size)
        self._reclaim = self.deliveries.clone()

    def put_nowait(self, delivery: Delivery) -> None:
        """Raises trio.WouldBlock if full, trio.ClosedResourceError once ended."""
        self._send.send_nowait(delivery)

    async def put(self, delivery: Delivery) -> None:
        """Waits for room. Raises trio.ClosedResourceError once ended."""
        await self._send.send(delivery)

    def end(self) -> None:
        """End the stream: the caller reads what is buffered, then trio.EndOfChannel."""
        self._send.close()

    def take_back(self) -> list[Delivery]:
        """End the stream and return what nobody received, for the consumer to give back."""
        self._send.close()
        taken: list[Delivery] = []
        while True:
            try:
                taken.append(self._reclaim.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        self._reclaim.close()
        return taken
