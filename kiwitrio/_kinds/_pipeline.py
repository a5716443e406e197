"""The delivery pipeline every message kind runs: consume, decode, handle, settle.

:func:`serve` takes a consumer's deliveries and handles each in a task of its own, in a
nursery it owns (the broker sends at most ``prefetch_count`` unsettled deliveries, so at most
that many handlers run at once), each guarded by :meth:`Context.guard`: an error nobody
foresaw dead-letters that message only. A delivery is decoded first; one that cannot be
decoded goes to the kind's ``on_undecodable`` (which rejects it visibly, and may answer its
sender); one decoded goes to ``handle(delivery, value)``, which settles it.

Decoding happens in each delivery's own task by default. ``in_order`` instead decodes in the
consuming loop, in arrival order, and calls ``in_order(delivery, value)`` there before the
handler task starts: broadcasts use it to feed their ordered subscribers in order.

Cancellation: cancelling :func:`serve` cancels every handler; a delivery whose decoding was
cancelled goes back to its queue (handlers give back what they were cancelled in).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .._backends import Consumer, Delivery, drain
from .._errors import DecodeError
from .._saferepr import describe_error
from ._context import Context

__all__ = ["serve"]

#: ``handle(delivery, value)``: act on a decoded delivery, and settle it.
Handle = Callable[[Delivery, Any], Awaitable[None]]
#: ``on_undecodable(delivery, error)``: reject it visibly (and maybe answer the sender).
OnUndecodable = Callable[[Delivery, DecodeError], Awaitable[None]]


async def serve(ctx: Context, consumer: Consumer, what: str, handle: Handle,
                on_undecodable: OnUndecodable, *,
                parse: Callable[[Any], Any] | None = None,
                in_order: Callable[[Delivery, Any], Awaitable[None]] | None = None) -> None:
    """Handle every delivery of ``consumer`` until its stream ends (or this is cancelled).

    ``what`` names the messages in log lines; ``parse`` checks and reshapes the decoded
    value (raising DecodeError for one that is not what the kind expects).
    """
    decode_and_handle = functools.partial(_decode_and_handle, ctx, handle, on_undecodable, parse)
    async with trio.open_nursery() as handlers:
        async for delivery in drain(consumer.deliveries):
            if in_order is None:
                handlers.start_soon(ctx.guard, delivery, what, decode_and_handle)
                continue
            try:
                value = await _decode(ctx, delivery, parse)
            except DecodeError as exc:
                handlers.start_soon(on_undecodable, delivery, exc)
                continue
            await in_order(delivery, value)
            handlers.start_soon(ctx.guard, delivery, what,
                                functools.partial(_handle_decoded, handle, value))


async def _decode(ctx: Context, delivery: Delivery, parse: Callable[[Any], Any] | None) -> Any:
    value = await ctx.decode(delivery)  # raises only DecodeError, whatever the decoder does
    if parse is None:
        return value
    try:
        return parse(value)
    except DecodeError:
        raise
    except Exception as exc:  # a check that a hostile value made raise: its own problem
        raise DecodeError(f"cannot make sense of the message: {describe_error(exc)}") from exc


async def _decode_and_handle(ctx: Context, handle: Handle, on_undecodable: OnUndecodable,
                             parse: Callable[[Any], Any] | None, delivery: Delivery) -> None:
    try:
        value = await _decode(ctx, delivery, parse)
    except trio.Cancelled:
        await ctx.give_back(delivery)
        raise
    except DecodeError as exc:
        await on_undecodable(delivery, exc)
        return
    await handle(delivery, value)


async def _handle_decoded(handle: Handle, value: Any, delivery: Delivery) -> None:
    await handle(delivery, value)
