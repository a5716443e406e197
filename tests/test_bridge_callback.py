"""AsyncioBridge.run_callback: a plain asyncio-side function reports an outcome to Trio."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import outcome
import pytest
import trio
import trio.testing

from kiwitrio._bridge import AsyncioBridge, AsyncioOperationAborted, open_bridge
from kiwitrio._bridge._base import Report

from .test_bridge import BRIDGES


@pytest.fixture(params=BRIDGES)
async def bridge(request: pytest.FixtureRequest) -> AsyncIterator[AsyncioBridge]:
    async with open_bridge(request.param) as opened:
        yield opened


def _report_soon(report: Report, result: outcome.Outcome[Any]) -> None:
    # A report from a later loop iteration, as a future's done callback would give it.
    asyncio.get_running_loop().call_soon(report, result)


async def test_the_reported_value_and_error_reach_the_caller(bridge: AsyncioBridge) -> None:
    with trio.fail_after(10):
        assert await bridge.run_callback(_report_soon, outcome.Value(42)) == 42
        with pytest.raises(KeyError):
            await bridge.run_callback(_report_soon, outcome.Error(KeyError("x")))


async def test_only_the_first_report_counts_and_a_raising_start_is_the_outcome(
        bridge: AsyncioBridge) -> None:
    def twice(report: Report) -> None:
        report(outcome.Value("first"))
        report(outcome.Value("second"))

    def broken(_report: Report) -> None:
        raise ValueError("start failed")

    with trio.fail_after(10):
        assert await bridge.run_callback(twice) == "first"
        with pytest.raises(ValueError, match="start failed"):
            await bridge.run_callback(broken)


async def test_a_cancelled_caller_stops_waiting_and_the_late_report_is_dropped(
        bridge: AsyncioBridge) -> None:
    reports: list[Report] = []

    def hold(report: Report) -> None:
        reports.append(report)

    with trio.fail_after(10):
        with trio.move_on_after(0.05) as scope:
            await bridge.run_callback(hold)
        assert scope.cancelled_caught
        assert len(reports) == 1
        # Reporting after the caller left is harmless, and the bridge still works.
        await bridge.run(_call_plain, reports[0], outcome.Value("too late"))
        assert await bridge.run_callback(_report_soon, outcome.Value("next")) == "next"


async def test_a_call_never_reported_fails_when_the_thread_bridge_closes() -> None:
    failed = trio.Event()
    caught: list[BaseException] = []

    async def caller(bridge: AsyncioBridge) -> None:
        try:
            await bridge.run_callback(lambda report: None)
        except AsyncioOperationAborted as exc:
            caught.append(exc)
            failed.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            async with open_bridge("thread") as bridge:
                nursery.start_soon(caller, bridge)
                await trio.testing.wait_all_tasks_blocked()
            await failed.wait()
    assert isinstance(caught[0], ConnectionError)


async def _call_plain(fn: Any, *args: Any) -> None:
    fn(*args)
