"""Both asyncio bridges keep the interface's promises; each keeps its own."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

from kiwitrio._bridge import (
    BRIDGE_ENV,
    AsyncioBridge,
    AsyncioOperationAborted,
    ThreadBridge,
    default_bridge,
    open_bridge,
    resolve_bridge,
    trio_asyncio_unavailable,
)

BRIDGES = [
    "thread",
    pytest.param("trio-asyncio", marks=pytest.mark.skipif(
        trio_asyncio_unavailable() is not None, reason=str(trio_asyncio_unavailable()))),
]


@pytest.fixture(params=BRIDGES)
async def bridge(request: pytest.FixtureRequest) -> AsyncIterator[AsyncioBridge]:
    async with open_bridge(request.param) as opened:
        assert opened.name == request.param
        yield opened


# -- the interface, on both -------------------------------------------------------------------

async def test_run_returns_the_result_and_raises_the_error(bridge: AsyncioBridge) -> None:
    async def double(n: int) -> int:
        await asyncio.sleep(0)
        return n * 2

    async def fail() -> None:
        await asyncio.sleep(0)
        raise KeyError("asyncio side")

    with trio.fail_after(10):
        assert await bridge.run(double, 21) == 42
        with pytest.raises(KeyError, match="asyncio side"):
            await bridge.run(fail)


async def test_run_calls_fn_inside_the_asyncio_task(bridge: AsyncioBridge) -> None:
    # aio-pika asks for the running loop in plain methods: fn itself must run in asyncio.
    def plain() -> asyncio.Future[str]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        loop.call_soon(future.set_result, "from the running loop")
        return future

    with trio.fail_after(10):
        assert await bridge.run(plain) == "from the running loop"


async def test_asyncio_keeps_its_order(bridge: AsyncioBridge) -> None:
    # What asyncio promises, and no more: call_soon callbacks run first in, first out
    # (cancelled ones not at all), a timer runs once and not before its delay, gather keeps
    # the order of its awaitables. The order of two timers that are both overdue, and how
    # timers interleave with callbacks queued earlier, are not promised (trio-asyncio's loop
    # runs an overdue timer it meets first; a loaded machine makes both timers overdue).
    soon: list[Any] = []
    timers: dict[str, tuple[float, float]] = {}

    async def scenario() -> list[int]:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        for i in range(1000):
            loop.call_soon(soon.append, i)
        loop.call_soon(soon.append, "cancelled").cancel()

        def timer(name: str, delay: float) -> None:
            due = loop.time() + delay
            loop.call_later(delay, lambda: timers.setdefault(name, (due, loop.time())))

        timer("late", 0.02)
        timer("early", 0.01)
        loop.call_later(0.03, done.set_result, None)
        await done

        async def child(n: int) -> int:
            await asyncio.sleep(0)
            return n * 2

        return list(await asyncio.gather(*(child(n) for n in range(5))))

    with trio.fail_after(10):
        assert await bridge.run(scenario) == [0, 2, 4, 6, 8]
    assert soon == list(range(1000))
    assert sorted(timers) == ["early", "late"]
    for due, ran in timers.values():
        # asyncio's loops run a timer up to one clock resolution early.
        assert ran >= due - 0.005


async def test_cancelling_the_trio_caller_cancels_the_asyncio_task(
        bridge: AsyncioBridge) -> None:
    cancelled = trio.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            bridge.call_in_trio(cancelled.set)
            raise

    with trio.fail_after(10):
        with trio.move_on_after(0.1) as scope:
            await bridge.run(forever)
        assert scope.cancelled_caught
        await cancelled.wait()


async def test_thread_bridge_caller_waits_for_the_asyncio_task_to_finish() -> None:
    finished = threading.Event()

    async def slow_to_cancel() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            # Clean-up that takes a while: the Trio caller must not return before it ends.
            await asyncio.shield(asyncio.sleep(0.2))
            finished.set()

    async with open_bridge("thread") as bridge:
        with trio.fail_after(10), trio.move_on_after(0.05):
            await bridge.run(slow_to_cancel)
        assert finished.is_set()


async def test_asyncio_side_cancellation_raises_a_connection_error(
        bridge: AsyncioBridge) -> None:
    # aiormq 6 cancels the futures of pending operations when their connection closes; that
    # must reach Trio callers as a ConnectionError (hence a reconnect), not as asyncio's
    # CancelledError, which Trio code cannot tell from a crash.
    async def cancelled_under_us() -> None:
        pending = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(pending.cancel)
        await pending

    with trio.fail_after(10):
        with pytest.raises(AsyncioOperationAborted) as caught:
            await bridge.run(cancelled_under_us)
        assert isinstance(caught.value, ConnectionError)
        assert "cancelled_under_us" in str(caught.value)
        assert await bridge.run(asyncio.sleep, 0, "still works") == "still works"


async def test_start_in_asyncio_and_call_in_trio_keep_order(bridge: AsyncioBridge) -> None:
    received: list[int] = []
    done = trio.Event()

    async def hand_back(n: int) -> None:
        bridge.call_in_trio(received.append, n)
        if n == 499:
            bridge.call_in_trio(done.set)

    for n in range(500):
        bridge.start_in_asyncio(hand_back, n)
    with trio.fail_after(10):
        await done.wait()
    assert received == list(range(500))


async def test_an_error_in_a_crossing_call_is_logged(
        bridge: AsyncioBridge, caplog: pytest.LogCaptureFixture) -> None:
    done = trio.Event()

    def broken() -> None:
        raise ValueError("bad callback")

    async def cross() -> None:
        bridge.call_in_trio(broken)
        bridge.call_in_trio(done.set)  # later calls still run

    await bridge.run(cross)
    with trio.fail_after(10):
        await done.wait()
    assert any("broken" in r.getMessage() and r.exc_info for r in caplog.records)


async def test_unhandled_asyncio_errors_are_logged_not_raised(
        bridge: AsyncioBridge, caplog: pytest.LogCaptureFixture) -> None:
    async def leave_an_error_behind() -> None:
        loop = asyncio.get_running_loop()
        loop.call_exception_handler({"message": "left behind", "exception": OSError("boom")})

    with trio.fail_after(10):
        await bridge.run(leave_an_error_behind)
    assert any("left behind" in r.getMessage() and "boom" in r.getMessage()
               for r in caplog.records)


# -- the thread bridge ------------------------------------------------------------------------

async def test_thread_bridge_runs_asyncio_in_another_thread_with_its_own_loop() -> None:
    policy = asyncio.get_event_loop_policy()

    async def where() -> tuple[int, asyncio.AbstractEventLoop]:
        return threading.get_ident(), asyncio.get_running_loop()

    async with open_bridge("thread") as bridge:
        assert isinstance(bridge, ThreadBridge)
        thread_id, loop = await bridge.run(where)
        assert thread_id != threading.get_ident()
        assert loop is bridge.loop
        assert type(loop) is asyncio.SelectorEventLoop  # made by kiwitrio, not the policy
    assert loop.is_closed()
    assert asyncio.get_event_loop_policy() is policy


async def test_a_burst_of_crossings_costs_one_wake_up() -> None:
    async with open_bridge("thread") as bridge:
        assert isinstance(bridge, ThreadBridge)
        wake_ups = 0
        run_batch = bridge._run_trio_batch

        def counting_batch() -> None:
            nonlocal wake_ups
            wake_ups += 1
            run_batch()

        bridge._run_trio_batch = counting_batch  # type: ignore[method-assign]
        received: list[int] = []
        done = trio.Event()
        burst_queued = threading.Event()

        async def burst() -> None:
            # 1000 deliveries handed over in one asyncio callback, as a flood would.
            for n in range(1000):
                bridge.call_in_trio(received.append, n)
            bridge.call_in_trio(done.set)
            burst_queued.set()

        bridge.start_in_asyncio(burst)
        # Hold the Trio thread until the whole burst is queued, so that the test does not
        # depend on how the two threads happen to be scheduled.
        assert burst_queued.wait(10)
        with trio.fail_after(10):
            await done.wait()
        assert received == list(range(1000))
        assert wake_ups == 1


async def test_thread_bridge_refuses_calls_once_closed() -> None:
    async with open_bridge("thread") as bridge:
        pass
    with pytest.raises(AsyncioOperationAborted, match="closing"):
        await bridge.run(asyncio.sleep, 0)
    bridge.start_in_asyncio(asyncio.sleep, 0)  # dropped quietly


async def test_thread_bridge_cancels_leftover_tasks_and_stops_its_thread() -> None:
    cancelled = threading.Event()

    async def left_running() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    threads_before = set(threading.enumerate())
    async with open_bridge("thread") as bridge:
        bridge.start_in_asyncio(left_running)
        await trio.sleep(0.05)
    assert cancelled.is_set()
    assert not [t for t in set(threading.enumerate()) - threads_before
                if t.name == "kiwitrio-asyncio"]


# -- choosing -----------------------------------------------------------------------------------

def test_choices_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BRIDGE_ENV, raising=False)
    assert resolve_bridge("thread") == "thread"
    assert resolve_bridge("auto") == default_bridge()
    with pytest.raises(ValueError, match="bridge must be one of"):
        resolve_bridge("uvloop")
    monkeypatch.setenv(BRIDGE_ENV, "thread")
    assert resolve_bridge("auto") == "thread"
    monkeypatch.setenv(BRIDGE_ENV, "nonsense")
    with pytest.raises(ValueError, match=BRIDGE_ENV):
        resolve_bridge("auto")


@pytest.mark.skipif(trio_asyncio_unavailable() is None, reason="trio-asyncio works here")
def test_trio_asyncio_refused_with_the_reason_where_it_cannot_run() -> None:
    with pytest.raises(ValueError, match="cannot be used"):
        resolve_bridge("trio-asyncio")


# -- the trio-asyncio bridge ------------------------------------------------------------------

trio_asyncio_only = pytest.mark.skipif(trio_asyncio_unavailable() is not None,
                                       reason=str(trio_asyncio_unavailable()))


@trio_asyncio_only
async def test_batched_loop_is_installed_on_the_tested_version() -> None:
    import trio_asyncio

    async with open_bridge("trio-asyncio") as bridge:
        assert bridge.batched == (trio_asyncio.__version__ == "0.16.0")  # type: ignore[attr-defined]


@trio_asyncio_only
async def test_stock_loop_can_be_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    from kiwitrio._bridge._trio_asyncio import STOCK_LOOP_ENV

    monkeypatch.setenv(STOCK_LOOP_ENV, "1")
    async with open_bridge("trio-asyncio") as bridge:
        assert not bridge.batched  # type: ignore[attr-defined]


@trio_asyncio_only
@pytest.mark.parametrize("stock", [False, True])
async def test_callbacks_beyond_one_batch_keep_their_order(
        stock: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    from kiwitrio._bridge._trio_asyncio import BATCH_LIMIT, STOCK_LOOP_ENV

    if stock:
        monkeypatch.setenv(STOCK_LOOP_ENV, "1")
    order: list[int] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        for i in range(BATCH_LIMIT * 3):
            loop.call_soon(order.append, i)
        loop.call_soon(done.set_result, None)
        await done

    async with open_bridge("trio-asyncio") as bridge:
        with trio.fail_after(10):
            await bridge.run(scenario)
    assert order == list(range(BATCH_LIMIT * 3))


@trio_asyncio_only
async def test_trio_tasks_keep_running_during_an_asyncio_flood() -> None:
    from kiwitrio._bridge._trio_asyncio import BATCH_LIMIT

    rounds, flood_size = 20, 1024
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    async def flood() -> None:
        loop = asyncio.get_running_loop()
        for _ in range(rounds):
            futures = [loop.create_future() for _ in range(flood_size)]
            for future in futures:
                loop.call_soon(future.set_result, None)
            await asyncio.gather(*futures)

    async with open_bridge("trio-asyncio") as bridge, trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        await bridge.run(flood)
        nursery.cancel_scope.cancel()
    # The batch limit makes the main loop yield to Trio between batches, and so it yields
    # several times per round of flood_size callbacks.
    assert BATCH_LIMIT * 3 <= flood_size
    assert ticks >= rounds * 3


@trio_asyncio_only
async def test_call_soon_checks_callbacks_in_debug_mode_only() -> None:
    # The batched loop's call_soon skips asyncio's callback check unless the loop is in
    # debug mode, as asyncio's own loops do; in debug mode a coroutine function is refused.
    async def not_a_callback() -> None:
        pass

    async with open_bridge("trio-asyncio") as bridge:
        if not bridge.batched:  # type: ignore[attr-defined]
            pytest.skip("the batched loop is installed on trio-asyncio 0.16.0 only")
        loop = bridge.loop  # type: ignore[attr-defined]
        ran = trio.Event()
        handle = loop.call_soon(ran.set)
        with trio.fail_after(5):
            await ran.wait()
        assert isinstance(handle, asyncio.Handle)
        # Not checked outside debug mode (the stock loop checks always, and raises here).
        loop.call_soon(not_a_callback).cancel()
        loop.set_debug(True)
        try:
            with pytest.raises(TypeError, match="coroutines cannot be used with call_soon"):
                loop.call_soon(not_a_callback)
        finally:
            loop.set_debug(False)


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signal masks")
async def test_thread_bridge_thread_leaves_process_signals_to_the_main_thread() -> None:
    async def blocked_here() -> set[int]:
        return set(signal.pthread_sigmask(signal.SIG_BLOCK, []))

    async with open_bridge("thread") as bridge:
        assert {signal.SIGINT, signal.SIGTERM} <= await bridge.run(blocked_here)
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
