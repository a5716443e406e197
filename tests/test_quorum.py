"""Quorum queues, delivery limits and finished tasks, through the communicator (RabbitMQ and
the memory broker): ``queue_type``, ``delivery_limit`` and ``finished_tasks``."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest
import trio

import kiwitrio
import kiwitrio.lowlevel
from kiwitrio._backends import OutgoingMessage, QueueSpec
from kiwitrio._kinds._redelivery import TASK_ID_HEADER

from .conftest import Names, OpenComm

DEADLINE = 15


async def square(_comm: Any, x: int) -> int:
    return x * x


async def test_quorum_task_queues_work_and_refuse_another_type(open_comm: OpenComm,
                                                               names: Names) -> None:
    async with open_comm(queue_type="quorum") as worker:
        await worker.add_task_subscriber(square)
        # A communicator that would declare the same queues as classic ones is refused,
        # saying what exists and what it asked for...
        with pytest.raises(kiwitrio.DeclarationMismatch) as refused:
            async with open_comm():
                pass
        assert refused.value.argument == "x-queue-type"
        assert "'quorum' on the broker" in str(refused.value)
        # ...and the running system goes on: results come back (through a quorum reply queue).
        with trio.fail_after(DEADLINE):
            assert await (await worker.task_send(7)) == 49
            other = await worker.task_queue(names.queue("other"), queue_type="classic")
            await other.add_task_subscriber(square)
            assert await (await other.task_send(3)) == 9


async def test_a_task_past_its_delivery_limit_is_dead_lettered_with_a_reason(
        open_comm: OpenComm, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[tuple[int, str | None]] = []

    async def always_declines(_comm: Any, _task: Any) -> None:
        info = kiwitrio.current_delivery()
        seen.append((info.delivery_count, info.task_id))
        raise kiwitrio.TaskRejected("not for me")  # back to the queue, counted

    async with open_comm(queue_type="quorum", delivery_limit=2) as worker:
        await worker.add_task_subscriber(always_declines)
        queue = worker.default_queue
        handle = await queue.task_send("poison")
        session = kiwitrio.lowlevel.session_of(worker)
        with trio.fail_after(DEADLINE):
            while True:  # nothing to wait on for the dead letter's arrival: polled
                stats = await session.inspect_queue(f"{queue.name}.dead-letter")
                if stats is not None and stats.messages == 1:
                    break
                await trio.sleep(0.05)
            # Its sender is told, instead of waiting for ever.
            with pytest.raises(kiwitrio.RemoteException) as told:
                await handle
            assert told.value.remote_type == "DeliveryLimitExceeded"
    # Delivered once and redelivered twice, then refused unrun.
    assert [count for count, _ in seen] == [0, 1, 2]
    assert len({task_id for _, task_id in seen}) == 1 and seen[0][1] is not None
    [line] = [r for r in caplog.records if "delivery_limit" in r.getMessage()]
    assert line.levelno == logging.WARNING and line.name == "kiwitrio.tasks"
    assert "delivered 3 times without finishing, more than delivery_limit (2)" in line.getMessage()


async def test_a_finished_task_that_comes_back_is_answered_not_run_again(
        open_comm: OpenComm) -> None:
    runs: list[int] = []

    async def counted(_comm: Any, x: int) -> int:
        runs.append(x)
        return x + 1

    async with open_comm(finished_tasks=kiwitrio.MemoryFinishedTasks()) as worker:
        await worker.add_task_subscriber(counted)
        session = kiwitrio.lowlevel.session_of(worker)
        replies = await session.declare_queue(QueueSpec(
            f"{worker.default_queue.name}.replies-here", exclusive=True))
        # The same task twice, as a sender republishes one whose confirm never came.
        task = OutgoingMessage(worker._ctx.encode(41), worker._ctx.content_type,
                               correlation_id=uuid.uuid4().hex, reply_to=replies,
                               headers={TASK_ID_HEADER: uuid.uuid4().hex}, persistent=True)
        exchange, queue = worker.default_queue.exchange, worker.default_queue.name
        answers = []
        consumer = await session.consume(replies, prefetch_count=10)
        for _ in range(2):
            await session.publish(exchange, queue, task, mandatory=True)
            with trio.fail_after(DEADLINE):
                answer = await consumer.deliveries.receive()
            await answer.ack()
            answers.append(worker._ctx.decoder(answer.body))
        stats = await session.inspect_queue(queue)
    assert runs == [41]
    assert answers == [{"result": 42}, {"result": 42}]
    assert stats is not None and stats.messages == 0  # both acknowledged


@pytest.mark.parametrize(("options", "complaint"), [
    ({"delivery_limit": 3}, "needs queue_type='quorum'"),
    ({"queue_type": "classic", "delivery_limit": 3}, "needs queue_type='quorum'"),
    ({"queue_type": "quorum", "delivery_limit": -1}, "0 or more"),
    ({"queue_type": "stream"}, "cannot hold tasks"),
    ({"queue_type": "lazy"}, "must be 'classic', 'quorum' or None"),
])
async def test_options_that_cannot_work_are_refused_before_connecting(
        options: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        async with kiwitrio.open_communicator("amqp://127.0.0.1:1/", **options):
            pass


async def test_a_task_queue_open_here_keeps_its_settings(open_comm: OpenComm,
                                                        names: Names) -> None:
    async with open_comm(queue_type="quorum") as comm:
        name = names.queue("more")
        queue = await comm.task_queue(name, delivery_limit=5)
        assert await comm.task_queue(name) is queue
        assert await comm.task_queue(name, delivery_limit=5) is queue
        with pytest.raises(ValueError, match="open here already"):
            await comm.task_queue(name, delivery_limit=6)
