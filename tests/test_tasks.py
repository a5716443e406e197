"""Task semantics, against RabbitMQ and the in-memory broker (see the open_comm fixture)."""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Any

import pytest
import trio

import kiwitrio

from .conftest import Names, OpenComm

DEADLINE = 10


async def test_async_and_sync_subscribers_return_results(open_comm: OpenComm) -> None:
    threads: list[threading.Thread] = []

    def sync_double(_comm: Any, task: int) -> int:
        threads.append(threading.current_thread())
        return task * 2

    async def async_square(_comm: Any, task: int) -> int:
        return task * task

    async with open_comm() as comm:
        square_queue = await comm.task_queue(f"{comm._default_queue.name}.square")
        await comm.add_task_subscriber(sync_double)
        await square_queue.add_task_subscriber(async_square)
        with trio.fail_after(DEADLINE):
            assert await (await comm.task_send(21)) == 42
            assert await (await square_queue.task_send(7)) == 49
    # A sync subscriber runs in a worker thread, never on the event loop's thread.
    assert threads and threads[0] is not threading.main_thread()


async def test_subscriber_returning_future_or_awaitable(open_comm: OpenComm) -> None:
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    release = threading.Event()

    def returns_future(_comm: Any, task: int) -> concurrent.futures.Future[int]:
        def slow() -> int:
            release.wait(DEADLINE)
            return task + 1

        return executor.submit(slow)

    async with open_comm() as comm:
        await comm.add_task_subscriber(returns_future)
        handle = await comm.task_send(1)
        with trio.move_on_after(0.2):
            await handle
        assert not handle.done()  # the reply waits for the future
        release.set()
        with trio.fail_after(DEADLINE):
            assert await handle == 2
    executor.shutdown()


async def test_remote_exception_carries_type_message_and_traceback(open_comm: OpenComm) -> None:
    async def failing_subscriber(_comm: Any, task: str) -> None:
        raise KeyError(f"no such thing: {task}")

    async with open_comm() as comm:
        await comm.add_task_subscriber(failing_subscriber)
        handle = await comm.task_send("x")
        with trio.fail_after(DEADLINE), pytest.raises(kiwitrio.RemoteException) as info:
            await handle
    assert info.value.remote_type == "KeyError"
    assert "no such thing: x" in info.value.remote_message
    assert "failing_subscriber" in info.value.remote_traceback


async def test_rejected_task_goes_to_next_subscriber(open_comm: OpenComm) -> None:
    def rejecting(_comm: Any, _task: Any) -> None:
        raise kiwitrio.TaskRejected()

    async with open_comm() as comm:
        await comm.add_task_subscriber(rejecting)
        await comm.add_task_subscriber(lambda _comm, task: f"second got {task}")
        with trio.fail_after(DEADLINE):
            assert await (await comm.task_send("t")) == "second got t"


async def test_task_rejected_by_all_goes_back_to_the_queue(open_comm: OpenComm) -> None:
    rejected = trio.Event()

    async def rejecting(_comm: Any, _task: Any) -> None:
        rejected.set()
        raise kiwitrio.TaskRejected()

    async with open_comm() as sender, open_comm() as picky:
        await picky.add_task_subscriber(rejecting)
        handle = await sender.task_send("t")
        with trio.fail_after(DEADLINE):
            await rejected.wait()
            async with open_comm() as willing:
                await willing.add_task_subscriber(lambda _comm, task: "done")
                assert await handle == "done"


async def test_subscribers_run_concurrently_up_to_prefetch(open_comm: OpenComm) -> None:
    started = 0
    all_started = trio.Event()

    async def blocking(_comm: Any, task: int) -> int:
        nonlocal started
        started += 1
        if started == 3:
            all_started.set()
        await all_started.wait()
        return task

    async with open_comm(task_prefetch_count=3) as comm:
        await comm.add_task_subscriber(blocking)
        with trio.fail_after(DEADLINE):
            handles = [await comm.task_send(i) for i in range(3)]
            assert [await h for h in handles] == [0, 1, 2]


async def test_busy_subscribers_do_not_block_rpc_or_other_deliveries(open_comm: OpenComm) -> None:
    release = threading.Event()
    started = threading.Event()

    def blocking_sync(_comm: Any, _task: Any) -> str:
        started.set()
        release.wait(DEADLINE)
        return "slow done"

    async with open_comm(task_prefetch_count=2) as comm:
        await comm.add_task_subscriber(blocking_sync)
        await comm.add_rpc_subscriber(lambda _comm, msg: msg, "echo")
        slow = await comm.task_send("slow")
        with trio.fail_after(DEADLINE):
            await trio.to_thread.run_sync(started.wait)
            # The thread blocks; the event loop goes on serving RPCs.
            assert await (await comm.rpc_send("echo", "ping")) == "ping"
            release.set()
            assert await slow == "slow done"


async def test_no_reply_returns_at_once_and_task_still_runs(open_comm: OpenComm) -> None:
    done = trio.Event()

    async def subscriber(_comm: Any, _task: Any) -> None:
        done.set()

    async with open_comm() as comm:
        await comm.add_task_subscriber(subscriber)
        handle = await comm.task_send("fire", no_reply=True)
        assert handle.done() and handle.result() is None
        with trio.fail_after(DEADLINE):
            await done.wait()


async def test_closing_worker_gives_unfinished_task_back(open_comm: OpenComm) -> None:
    started = trio.Event()

    async def never_finishes(_comm: Any, _task: Any) -> None:
        started.set()
        await trio.sleep_forever()

    async with open_comm() as sender:
        handle = await sender.task_send("important")
        with trio.fail_after(DEADLINE):
            async with open_comm() as worker:
                await worker.add_task_subscriber(never_finishes)
                await started.wait()
            # The worker left its block mid-task: the task is back in the queue.
            async with open_comm() as second:
                async with second._default_queue.next_task(timeout=DEADLINE) as task:
                    assert task.body == "important"
                    assert task.redelivered
                    task.process().set_result("finished by another")
            assert await handle == "finished by another"


async def test_cancelling_a_wait_cancels_only_that_wait(open_comm: OpenComm) -> None:
    release = trio.Event()

    async def waits(_comm: Any, _task: Any) -> str:
        await release.wait()
        return "late"

    async with open_comm() as comm:
        await comm.add_task_subscriber(waits)
        handle = await comm.task_send("t")
        with trio.move_on_after(0.1) as scope:
            await handle
        assert scope.cancelled_caught
        release.set()
        with trio.fail_after(DEADLINE):
            assert await handle == "late"


async def test_send_to_missing_queue_is_unroutable(open_comm: OpenComm, names: Names) -> None:
    async with open_comm() as comm:
        queue = await comm.task_queue(f"{names.prefix}.gone")
        await comm._ctx.session.delete_queue(queue.name)
        with trio.fail_after(DEADLINE), pytest.raises(kiwitrio.UnroutableError):
            await queue.task_send("lost?")


async def test_unencodable_task_raises_type_error(open_comm: OpenComm) -> None:
    async with open_comm() as comm:
        with pytest.raises(TypeError):
            await comm.task_send(object())


async def test_duplicate_and_missing_task_subscriber(open_comm: OpenComm) -> None:
    async with open_comm() as comm:
        ident = await comm.add_task_subscriber(lambda _c, t: t, identifier="w")
        assert ident == "w"
        with pytest.raises(kiwitrio.DuplicateSubscriberIdentifier):
            await comm.add_task_subscriber(lambda _c, t: t, identifier="w")
        await comm.remove_task_subscriber("w")
        with pytest.raises(ValueError, match="no task subscriber"):
            await comm.remove_task_subscriber("w")


async def test_removed_subscriber_stops_taking_tasks(open_comm: OpenComm) -> None:
    async with open_comm() as comm:
        ident = await comm.add_task_subscriber(lambda _c, t: t)
        with trio.fail_after(DEADLINE):
            assert await (await comm.task_send(1)) == 1
        await comm.remove_task_subscriber(ident)
        await comm.task_send(2, no_reply=True)
        # Nobody consumes now: the task waits in the queue for a puller.
        async with comm._default_queue.next_task(timeout=DEADLINE) as task:
            assert task.body == 2
            task.process().set_result(None)


# -- pull mode ------------------------------------------------------------------------------


async def test_next_task_on_empty_queue_raises_queue_empty(open_comm: OpenComm) -> None:
    async with open_comm() as comm:
        queue = await comm.task_queue(comm._default_queue.name)
        with trio.fail_after(DEADLINE), pytest.raises(kiwitrio.QueueEmpty):
            async with queue.next_task():
                pass
        with trio.fail_after(DEADLINE), pytest.raises(kiwitrio.QueueEmpty):
            async with queue.next_task(timeout=0.2):
                pass


async def test_next_task_waits_for_a_task_sent_meanwhile(open_comm: OpenComm) -> None:
    async with open_comm() as comm:
        queue = comm._default_queue
        handles: list[kiwitrio.ResultHandle] = []

        async def send_later() -> None:
            await trio.sleep(0.2)
            handles.append(await comm.task_send("late task"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_later)
            with trio.fail_after(DEADLINE):
                async with queue.next_task(timeout=DEADLINE) as task:
                    assert task.body == "late task"
                    task.process().set_result("pulled")
        with trio.fail_after(DEADLINE):
            assert await handles[0] == "pulled"


async def test_unfinished_pulled_task_is_requeued(open_comm: OpenComm) -> None:
    async with open_comm() as comm:
        queue = comm._default_queue
        handle = await comm.task_send("again")
        with trio.fail_after(DEADLINE):
            async with queue.next_task(timeout=DEADLINE) as task:
                assert not task.redelivered
            with pytest.raises(RuntimeError, match="boom"):
                async with queue.next_task(timeout=DEADLINE) as task:
                    assert task.redelivered
                    raise RuntimeError("boom")
            async with queue.next_task(timeout=DEADLINE) as task:
                async with task.processing() as outcome:
                    outcome.set_result("third time")
            assert await handle == "third time"


async def test_exception_in_processing_becomes_remote_exception(open_comm: OpenComm) -> None:
    async with open_comm() as comm:
        handle = await comm.task_send("bad")
        with trio.fail_after(DEADLINE):
            with pytest.raises(ValueError):
                async with comm._default_queue.next_task(timeout=DEADLINE) as task:
                    async with task.processing():
                        raise ValueError("cannot do it")
            with pytest.raises(kiwitrio.RemoteException, match="cannot do it"):
                await handle


async def test_iterating_a_queue_yields_each_waiting_task(open_comm: OpenComm) -> None:
    async with open_comm() as comm:
        handles = [await comm.task_send(i) for i in range(3)]
        seen = []
        with trio.fail_after(DEADLINE):
            async for task in comm._default_queue:
                seen.append(task.body)
                async with task.processing() as outcome:
                    outcome.set_result(task.body * 10)
            assert sorted(seen) == [0, 1, 2]
            assert [await h for h in handles] == [0, 10, 20]


async def test_subscriber_sees_whether_a_task_is_redelivered(open_comm: OpenComm) -> None:
    seen: list[tuple[str, bool]] = []
    started = trio.Event()

    async def stuck(_comm: Any, _task: Any) -> None:
        seen.append(("first", kiwitrio.current_delivery().redelivered))
        started.set()
        await trio.sleep_forever()

    def second(_comm: Any, task: Any) -> Any:  # a plain one: runs in a worker thread
        seen.append(("second", kiwitrio.current_delivery().redelivered))
        return task

    async with open_comm() as sender:
        handle = await sender.task_send("again")
        with trio.fail_after(DEADLINE):
            async with open_comm() as worker:
                await worker.add_task_subscriber(stuck)
                await started.wait()
            async with open_comm() as worker:
                await worker.add_task_subscriber(second)
                assert await handle == "again"
    assert seen == [("first", False), ("second", True)]
    with pytest.raises(LookupError):
        kiwitrio.current_delivery()


async def test_oversized_messages_are_refused_and_dead_lettered(open_comm: OpenComm) -> None:
    from kiwitrio._backends import OutgoingMessage

    async with open_comm(max_message_size=1024) as comm:
        await comm.add_task_subscriber(lambda _c, task: len(task))
        with pytest.raises(ValueError, match="max_message_size"):
            await comm.task_send(b"x" * 2048)
        queue = comm._default_queue
        big = OutgoingMessage(kiwitrio.cbor_encode(b"y" * 4096), kiwitrio.CBOR_CONTENT_TYPE)
        await comm._ctx.session.publish(queue.exchange, queue.name, big, mandatory=True)
        with trio.fail_after(DEADLINE):
            assert await (await comm.task_send(b"z" * 10)) == 10
            dead = None
            while dead is None:
                dead = await comm._ctx.session.get(f"{queue.name}.dead-letter")
                if dead is None:
                    await trio.sleep(0.05)
        assert len(dead.body) > 4096
        await dead.ack()


async def test_breaking_out_of_iteration_settles_the_task_on_close(open_comm: OpenComm) -> None:
    async with open_comm() as sender:
        done, undone = await sender.task_send("done"), await sender.task_send("undone")
        with trio.fail_after(DEADLINE):
            async with open_comm() as worker:
                async for task in worker._default_queue:
                    task.process().set_result("finished after break")
                    break
            # On close, the task with an outcome was finished, not redelivered.
            assert await done == "finished after break"
            async with open_comm() as other:
                await other.add_task_subscriber(lambda _c, task: f"later {task}")
                assert await undone == "later undone"
