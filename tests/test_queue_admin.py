"""Listing, purging and deleting task queues (kiwitrio/_kinds/_admin.py), on both backends."""

from __future__ import annotations

import pickle

import pytest
import trio

import kiwitrio
from kiwitrio._backends import OutgoingMessage
from kiwitrio._kinds._admin import ENTRY_HEADER, catalogue_name, read_catalogue

from .conftest import Names, OpenComm

pytestmark = pytest.mark.timeout(60)


def by_name(statuses: list[kiwitrio.QueueStatus]) -> dict[str, kiwitrio.QueueStatus]:
    return {status.name: status for status in statuses}


async def test_every_task_queue_is_listed_with_its_depths(open_comm: OpenComm,
                                                          names: Names) -> None:
    heavy, light = names.queue("heavy"), names.queue("light")
    async with open_comm() as comm:
        heavy_queue = await comm.task_queue(heavy)
        for task in range(3):
            await heavy_queue.task_send(task, no_reply=True)
        await comm.task_queue(light)
    # Another communicator, which has never heard of those queues, lists them all.
    async with open_comm() as comm:
        statuses = by_name(await comm.list_task_queues())
    assert set(statuses) == {names.task_queue, heavy, light}
    assert statuses[heavy] == kiwitrio.QueueStatus(
        name=heavy, exists=True, waiting=3, consumers=0,
        dead_letter_queue=f"{heavy}.dead-letter", dead_letters=0)
    assert statuses[light].waiting == 0 and statuses[light].exists


async def test_each_queue_is_catalogued_once_however_often_it_is_declared(
        open_comm: OpenComm, names: Names) -> None:
    for _ in range(3):
        async with open_comm() as comm:
            await comm.task_queue(names.queue("again"))
    async with open_comm() as comm:
        entries = await read_catalogue(comm._ctx.session, names.task_exchange)
        assert entries == [names.task_queue, names.queue("again")]
        # Reading gives the entries back: a second read finds them all again.
        assert await read_catalogue(comm._ctx.session, names.task_exchange) == entries


async def test_foreign_messages_and_duplicates_leave_the_catalogue(
        open_comm: OpenComm, names: Names, caplog: pytest.LogCaptureFixture) -> None:
    async with open_comm() as comm:
        session = comm._ctx.session
        catalogue = catalogue_name(names.task_exchange)
        # Two communicators that create the same queue at once both add it: a duplicate.
        duplicate = (names.task_queue.encode(), {ENTRY_HEADER: 1})
        for body, headers in [(b"\xff\xfe", {ENTRY_HEADER: 1}), (b"x" * 300, {ENTRY_HEADER: 1}),
                              (b"no-header", {}), duplicate]:
            await session.publish("", catalogue, OutgoingMessage(
                body=body, content_type="text/plain", headers=headers), mandatory=True)
        assert await read_catalogue(session, names.task_exchange) == [names.task_queue]
        assert await read_catalogue(session, names.task_exchange) == [names.task_queue]
        # One entry is left, given back on the catalogue reader's channel: a passive declare
        # on another channel may come to the broker first, so ask until it is there.
        with trio.fail_after(10):
            while True:
                stats = await session.inspect_queue(catalogue)
                assert stats is not None and stats.messages <= 1
                if stats.messages == 1:
                    break
                await trio.sleep(0.02)
    dropped = [r for r in caplog.records if "not a catalogue entry" in r.getMessage()]
    assert len(dropped) == 3, caplog.text


async def test_purge_removes_waiting_tasks_and_refuses_a_queue_in_use(
        open_comm: OpenComm, names: Names) -> None:
    async with open_comm() as comm:
        for task in range(4):
            await comm.task_send(task, no_reply=True)
        assert await comm.purge_queue(names.task_queue) == 4
        assert by_name(await comm.list_task_queues())[names.task_queue].waiting == 0

        await comm.task_send("kept", no_reply=True)
        held, release = trio.Event(), trio.Event()

        async def hold(_comm: kiwitrio.Communicator, task: object) -> object:
            held.set()
            await release.wait()
            return task

        await comm.add_task_subscriber(hold)
        with trio.fail_after(10):
            await held.wait()  # delivered: no longer waiting in the queue
        with pytest.raises(kiwitrio.InUseError, match="has 1 consumer") as refused:
            await comm.purge_queue(names.task_queue)
        assert (refused.value.kind, refused.value.name, refused.value.consumers) == (
            "queue", names.task_queue, 1)
        # Forced, it purges what waits; the task being worked on is not waiting and stays.
        assert await comm.purge_queue(names.task_queue, force=True) == 0
        release.set()

        with pytest.raises(kiwitrio.DeliveryFailed, match="no queue"):
            await comm.purge_queue(names.unique("missing"))


async def test_delete_takes_the_dead_letter_queue_and_the_catalogue_entry(
        open_comm: OpenComm, names: Names) -> None:
    doomed = names.queue("doomed")
    async with open_comm() as comm:
        queue = await comm.task_queue(doomed)
        await queue.task_send("a", no_reply=True)
        await queue.task_send("b", no_reply=True)
    async with open_comm() as comm:
        assert await comm.delete_queue(doomed) == {doomed: 2, f"{doomed}.dead-letter": 0}
        assert doomed not in by_name(await comm.list_task_queues())
        assert doomed not in await read_catalogue(comm._ctx.session, names.task_exchange)
        assert await comm.delete_queue(doomed) == {}  # gone: nothing to do, no error


async def test_delete_refuses_a_queue_with_consumers_unless_forced(
        open_comm: OpenComm, names: Names) -> None:
    async with open_comm() as worker, open_comm() as admin:
        await worker.add_task_subscriber(lambda _comm, task: task)
        with pytest.raises(kiwitrio.InUseError, match="not going to delete"):
            await admin.delete_queue(names.task_queue)
        # Nothing was deleted, the dead-letter queue included.
        assert by_name(await admin.list_task_queues())[names.task_queue].exists
        deleted = await admin.delete_queue(names.task_queue, force=True)
        assert set(deleted) == {names.task_queue, f"{names.task_queue}.dead-letter"}


async def test_delete_exchange_refuses_one_with_bindings_unless_forced(
        open_comm: OpenComm, names: Names) -> None:
    async with open_comm() as comm:
        with pytest.raises(kiwitrio.InUseError, match="queues bound"):
            await comm.delete_exchange(names.task_exchange)
        spare = names.unique("spare-exchange")
        await comm._ctx.session.declare_exchange(spare, "direct", durable=False,
                                                 auto_delete=False)
        await comm.delete_exchange(spare)
        await comm.delete_exchange(spare)  # a missing exchange is fine


@pytest.mark.parametrize("error", [
    kiwitrio.InUseError("busy", kind="queue", name="q", consumers=2),
    kiwitrio.DeclarationMismatch("differs", kind="queue", name="q", argument="x-expires"),
])
def test_errors_pickle_with_their_details(error: kiwitrio.KiwitrioError) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert vars(copy) == vars(error) != {}


async def test_status_forgets_a_queue_deleted_behind_its_back(open_comm: OpenComm,
                                                              names: Names) -> None:
    vanished = names.queue("vanished")
    async with open_comm() as comm:
        await comm.task_queue(vanished)
        # Deleted with another tool (rabbitmqctl, the management UI): the entry is stale.
        await comm._ctx.session.delete_queue(vanished)
        await comm._ctx.session.delete_queue(f"{vanished}.dead-letter")
    async with open_comm() as comm:
        [status] = [s for s in await comm.list_task_queues() if s.name == vanished]
        assert not status.exists  # shown once, as gone...
        assert vanished not in by_name(await comm.list_task_queues())  # ...then forgotten
