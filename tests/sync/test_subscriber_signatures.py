"""The blocking faces wrap subscribers; the signature check must still see the user's own."""

from __future__ import annotations

from typing import Any

import pytest

import kiwitrio
from kiwitrio_sync import BroadcastFilter

from .conftest import Connect, KiwipyConnect


def one_argument(msg: Any) -> Any:
    return msg


def kiwipy_broadcast(comm: Any, body: Any, sender: Any, subject: Any,
                     correlation_id: Any) -> None:
    pass


def test_sync_communicator_checks_the_users_subscriber(connect: Connect) -> None:
    comm = connect()
    with pytest.raises(TypeError, match=r"fn\(communicator, task\)"):
        comm.add_task_subscriber(one_argument)
    with pytest.raises(TypeError, match=r"fn\(communicator, msg\)"):
        comm.add_rpc_subscriber(one_argument, "sig-sync")
    with pytest.raises(TypeError, match=r"fn\(communicator, body, sender, subject, "):
        comm.add_broadcast_subscriber(BroadcastFilter(one_argument, subject="a"))
    comm.add_broadcast_subscriber(kiwipy_broadcast)


def test_kiwipy_face_checks_the_users_subscriber(kiwipy_connect: KiwipyConnect) -> None:
    comm = kiwipy_connect()
    with pytest.raises(TypeError, match=r"fn\(communicator, task\)"):
        comm.add_task_subscriber(one_argument)
    with pytest.raises(TypeError, match=r"fn\(communicator, msg\)"):
        comm.add_rpc_subscriber(one_argument, "sig-kiwipy")
    with pytest.raises(TypeError, match=r"fn\(communicator, body, sender, subject, "):
        comm.add_broadcast_subscriber(one_argument)
    # What kiwiPy accepts is accepted.
    comm.add_broadcast_subscriber(kiwitrio.BroadcastFilter(kiwipy_broadcast, subject="s.*"))
    comm.add_rpc_subscriber(lambda comm, msg: msg, "sig-kiwipy")
    comm.add_task_subscriber(lambda comm, task: task)
