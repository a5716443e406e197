"""kiwitrio._backends.drain: the consumers' loops take buffered deliveries in one go."""

from __future__ import annotations

import trio

from kiwitrio._backends import drain


async def test_buffered_items_come_in_order_without_a_switch_then_the_stream_ends() -> None:
    send, receive = trio.open_memory_channel[int](10)
    for item in range(5):
        send.send_nowait(item)
    interleaved: list[str] = []

    async def other_task() -> None:
        interleaved.append("other")

    seen: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(other_task)
        async for item in drain(receive):  # type: ignore[arg-type]
            seen.append(item)
            interleaved.append(f"item {item}")
            if item == 4:
                # The buffer is empty now: the next step waits, so other_task runs first.
                nursery.start_soon(send.aclose)
    assert seen == [0, 1, 2, 3, 4]
    # No checkpoint between buffered items: other_task ran only once the buffer was empty.
    assert interleaved == ["item 0", "item 1", "item 2", "item 3", "item 4", "other"]


async def test_an_empty_buffer_is_awaited() -> None:
    send, receive = trio.open_memory_channel[int](1)
    seen: list[int] = []

    async def producer() -> None:
        for item in range(3):
            await send.send(item)
        await send.aclose()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(producer)
            async for item in drain(receive):  # type: ignore[arg-type]
                seen.append(item)
    assert seen == [0, 1, 2]
