"""The trio-asyncio bridge keeps asyncio's semantics with the batched main loop."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio_asyncio

from kiwitrio._bridge import (
    BATCH_LIMIT,
    STOCK_LOOP_ENV,
    AsyncioOperationAborted,
    open_asyncio_bridge,
)


async def test_batched_loop_is_installed_on_the_tested_version() -> None:
    async with open_asyncio_bridge() as bridge:
        assert bridge.batched == (trio_asyncio.__version__ == "0.16.0")


async def test_stock_loop_can_be_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STOCK_LOOP_ENV, "1")
    async with open_asyncio_bridge() as bridge:
        assert not bridge.batched


@pytest.mark.parametrize("stock", [False, True])
async def test_callbacks_timers_and_tasks_keep_asyncio_order(
    stock: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if stock:
        monkeypatch.setenv(STOCK_LOOP_ENV, "1")
    order: list[Any] = []

    async def scenario() -> list[Any]:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        # More callbacks than one batch, so that batching and its limit are exercised.
        for i in range(BATCH_LIMIT * 3):
            loop.call_soon(order.append, i)
        cancelled = loop.call_soon(order.append, "cancelled")
        cancelled.cancel()
        loop.call_later(0.02, order.append, "late")
        loop.call_later(0.01, order.append, "early")
        loop.call_later(0.03, done.set_result, None)
        await done

        async def child(n: int) -> int:
            await asyncio.sleep(0)
            return n * 2

        return list(await asyncio.gather(*(child(n) for n in range(5))))

    async with open_asyncio_bridge() as bridge:
        with trio.fail_after(10):
            results = await bridge.run(scenario)
    assert results == [0, 2, 4, 6, 8]
    assert order == [*range(BATCH_LIMIT * 3), "early", "late"]


ROUNDS = 20
FLOOD = 1024


async def test_trio_tasks_keep_running_during_an_asyncio_flood() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    async def flood() -> None:
        loop = asyncio.get_running_loop()
        for _ in range(ROUNDS):
            futures = [loop.create_future() for _ in range(FLOOD)]
            for future in futures:
                loop.call_soon(future.set_result, None)
            await asyncio.gather(*futures)

    async with open_asyncio_bridge() as bridge, trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        await bridge.run(flood)
        nursery.cancel_scope.cancel()
    # The batch limit makes the main loop yield to Trio between batches.
    # and so it yields several times per round of FLOOD callbacks.
    assert BATCH_LIMIT * 3 <= FLOOD
    assert ticks >= ROUNDS * 3


async def test_cancelling_trio_caller_cancels_the_asyncio_task() -> None:
    cancelled = trio.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()  # a synchronous Trio call, allowed from asyncio callbacks
            raise

    async with open_asyncio_bridge() as bridge:
        with trio.move_on_after(0.1):
            await bridge.run(forever)
        with trio.fail_after(5):
            await cancelled.wait()


async def test_unhandled_asyncio_errors_are_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def leave_an_error_behind() -> None:
        loop = asyncio.get_running_loop()
        loop.call_exception_handler({"message": "left behind", "exception": OSError("boom")})

    async with open_asyncio_bridge() as bridge:
        await bridge.run(leave_an_error_behind)
        await trio.testing.wait_all_tasks_blocked()
    assert any("left behind" in r.getMessage() and "boom" in r.getMessage()
               for r in caplog.records)


async def test_asyncio_side_cancelling_an_operation_raises_a_connection_error() -> None:
    # aiormq 6 cancels the futures of pending operations when their connection closes; that
    # must reach Trio callers as a ConnectionError (hence a reconnect), not as asyncio's
    # CancelledError, which Trio code cannot tell from a crash.
    async def cancelled_under_us() -> None:
        pending = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(pending.cancel)
        await pending

    async with open_asyncio_bridge() as bridge:
        with trio.fail_after(5), pytest.raises(AsyncioOperationAborted) as caught:
            await bridge.run(cancelled_under_us)
        assert isinstance(caught.value, ConnectionError)
        assert "cancelled_under_us" in str(caught.value)
        assert await bridge.run(asyncio.sleep, 0, "still works") == "still works"


async def test_call_soon_checks_callbacks_in_debug_mode_only() -> None:
    # The batched loop's call_soon skips asyncio's callback check unless the loop is in
    # debug mode, as asyncio's own loops do; in debug mode a coroutine function is refused.
    async def not_a_callback() -> None:
        pass

    async with open_asyncio_bridge() as bridge:
        loop = bridge.loop
        ran = trio.Event()
        handle = loop.call_soon(ran.set)
        with trio.fail_after(5):
            await ran.wait()
        assert isinstance(handle, asyncio.Handle)
        loop.set_debug(True)
        try:
            with pytest.raises(TypeError, match="coroutines cannot be used with call_soon"):
                loop.call_soon(not_a_callback)
        finally:
            loop.set_debug(False)
