"""Tasks longer than the broker's consumer timeout run once, thanks to task leases.

A private RabbitMQ node with a 5 s consumer timeout (checked every second) stands in for
RabbitMQ's 30 minutes. The same 15 s task runs on two queues: one worker uses a 2 s lease, the
other none. Without the lease the broker takes the delivery back mid-task and the task runs
again; with it, it runs once and its result arrives once.

RabbitMQ 4.3 enforces consumer timeouts on quorum queues only; on the classic queues used
here the control (no lease) then runs once too, and the test checks that instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import trio

import kiwitrio

from ..conftest import Names
from .private_broker import PrivateBroker, available

pytestmark = pytest.mark.faults

CONSUMER_TIMEOUT_MS = 5_000
TASK_SECONDS = 15.0
LEASE = 2.0
DEADLINE = 60


@pytest.fixture(scope="module")
def short_timeout_broker(request: pytest.FixtureRequest) -> Iterator[PrivateBroker]:
    reason = available()
    if reason is not None:
        pytest.skip(f"cannot start a private RabbitMQ node: {reason}")
    broker = PrivateBroker(consumer_timeout_ms=CONSUMER_TIMEOUT_MS, channel_tick_ms=1_000)
    request.addfinalizer(broker.destroy)
    broker.start()
    yield broker


async def test_long_task_runs_once_with_a_lease_and_twice_without(
    short_timeout_broker: PrivateBroker, names: Names, capsys: pytest.CaptureFixture[str]
) -> None:
    url = short_timeout_broker.url
    runs: dict[str, list[bool]] = {"leased": [], "unleased": []}

    def long_task(kind: str) -> Any:
        async def run(_comm: Any, task: str) -> str:
            runs[kind].append(kiwitrio.current_delivery().redelivered)
            await trio.sleep(TASK_SECONDS)
            return f"{kind} {task}"
        return run

    options = {**names.kwargs(), "reconnect": kiwitrio.ReconnectPolicy(initial_delay=0.1)}
    async with kiwitrio.open_communicator(url, **options) as sender, \
            kiwitrio.open_communicator(url, **options, task_lease=LEASE) as leased, \
            kiwitrio.open_communicator(url, **options, task_lease=None) as unleased:
        leased_queue = await leased.task_queue(names.queue("leased"))
        unleased_queue = await unleased.task_queue(names.queue("unleased"))
        await leased_queue.add_task_subscriber(long_task("leased"))
        await unleased_queue.add_task_subscriber(long_task("unleased"))
        to_leased = await (await sender.task_queue(leased_queue.name)).task_send("t")
        to_unleased = await (await sender.task_queue(unleased_queue.name)).task_send("t")
        with trio.fail_after(DEADLINE):
            assert await to_leased == "leased t"
            assert await to_unleased == "unleased t"
        states = (leased.connection_state, unleased.connection_state)
        version = str(sender.server_properties.get("version", "0"))
    classic_queues_time_out = _version_tuple(version) < (4, 3)
    with capsys.disabled():
        print(f"\nFAULTS long-task: consumer_timeout_s={CONSUMER_TIMEOUT_MS / 1000} "
              f"task_s={TASK_SECONDS} lease_s={LEASE} runs_with_lease={len(runs['leased'])} "
              f"runs_without_lease={len(runs['unleased'])} broker={version} "
              f"classic_queues_time_out={classic_queues_time_out}")
    assert runs["leased"] == [False]  # once, never redelivered
    if classic_queues_time_out:
        # The control: the broker's consumer timeout did fire, and the task ran again.
        assert len(runs["unleased"]) >= 2 and runs["unleased"][1] is True
    else:
        assert runs["unleased"] == [False]
    assert states == (kiwitrio.ConnectionState.CONNECTED, kiwitrio.ConnectionState.CONNECTED)


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split(".")[:2]:
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)
