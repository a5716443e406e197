"""A queue or exchange that exists with other settings: the error says which setting and why
that probably is (the classic: testing_mode on one side only)."""

from __future__ import annotations

import pytest
import trio

import kiwitrio
from kiwitrio._backends import DEAD_LETTER_EXCHANGE, QueueSpec
from kiwitrio._backends._amqp import declaration_mismatch
from kiwitrio._kinds._tasks import dead_letter_exchange_name

from .conftest import AMQP_URL, Names

DEADLINE = 20
TESTING_HINT = "use the same testing_mode"


async def test_testing_mode_on_one_side_only_is_named(names: Names) -> None:
    options = names.kwargs()
    assert options.pop("testing_mode") is True
    with trio.fail_after(DEADLINE):
        async with kiwitrio.open_communicator(AMQP_URL, **options, testing_mode=True):
            with pytest.raises(kiwitrio.DeclarationMismatch) as caught:
                async with kiwitrio.open_communicator(AMQP_URL, **options,
                                                      testing_mode=False):
                    pass
    error = caught.value
    assert isinstance(error, kiwitrio.DeliveryFailed)
    assert error.argument == "auto_delete" and error.kind == "exchange"
    assert error.name == names.message_exchange
    message = str(error)
    assert "exists with other settings" in message and "'auto_delete'" in message
    assert TESTING_HINT in message and "--testing" in message
    assert "\n" not in message


async def test_a_queue_declared_without_testing_mode_arguments_is_named(names: Names) -> None:
    with trio.fail_after(DEADLINE):
        async with kiwitrio.open_communicator(AMQP_URL, **names.kwargs()) as comm:
            dlx = dead_letter_exchange_name(names.task_exchange)
            with pytest.raises(kiwitrio.DeclarationMismatch) as caught:
                # As a communicator without testing_mode declares it: no x-expires.
                await comm._ctx.session.declare_queue(QueueSpec(
                    names.task_queue, durable=True, arguments={DEAD_LETTER_EXCHANGE: dlx}))
    assert caught.value.argument == "x-expires" and caught.value.kind == "queue"
    assert TESTING_HINT in str(caught.value)


def test_another_queue_type_is_named() -> None:
    error = declaration_mismatch(
        "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'jobs' in vhost '/': "
        "received the value 'quorum' of type 'longstr' but current is none")
    assert error is not None
    assert "another queue type" in str(error) and "'jobs'" in str(error)
    assert TESTING_HINT not in str(error)


def test_other_refusals_are_left_alone() -> None:
    assert declaration_mismatch("PRECONDITION_FAILED - exchange 'x' in use") is None
