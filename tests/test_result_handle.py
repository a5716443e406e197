"""ResultHandle on its own: waiting, callbacks and pending replies, whatever the order of
the result and the waits (its Event and callback lists are made only when needed)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from kiwitrio import ResultHandle


async def test_waits_before_and_after_the_result_all_get_it() -> None:
    handle = ResultHandle("c1")
    got: list[object] = []

    async def wait() -> None:
        got.append(await handle)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        assert not handle.done() and got == []
        handle._set(5, None)
    assert got == [5, 5]
    assert await handle == 5 and handle.result() == 5 and handle.exception() is None


async def test_a_cancelled_wait_leaves_the_handle_pending() -> None:
    handle = ResultHandle("c2")
    with trio.move_on_after(0.01):
        await handle
    assert not handle.done()
    handle._set(None, ValueError("remote"))
    with pytest.raises(ValueError, match="remote"):
        await handle


def test_callbacks_before_and_after_the_result_are_called_once() -> None:
    handle = ResultHandle("c3")
    done: list[str] = []
    pending: list[int] = []
    handle.add_done_callback(lambda h: done.append("before"))
    handle.add_pending_callback(lambda h: pending.append(h.pending_replies))
    handle._note_pending()
    handle._note_pending()
    handle._set(1, None)
    handle._set(2, None)  # a duplicate reply: ignored
    handle._note_pending()  # none once done
    handle.add_done_callback(lambda h: done.append("after"))
    handle.add_pending_callback(lambda h: pending.append(-1))
    assert (done, pending, handle.result(), handle.pending_replies) == (
        ["before", "after"], [1, 2], 1, 2)
    with pytest.raises(RuntimeError):
        ResultHandle("c4").result()
