"""Permanent refusals (a wrong password, a missing vhost) fail at once, in one line.

Neither reconfigures the shared broker: a password that is not guest's, a vhost nobody made.
"""

from __future__ import annotations

import logging
import urllib.parse
import uuid
from typing import Any

import pytest
import trio

import kiwitrio
from kiwitrio._backends._amqp import _session

from .conftest import AMQP_URL, Names

#: host:port of the broker under test (the shared one, or RabbitMQ 4.3's on 5680).
BROKER = urllib.parse.urlsplit(AMQP_URL).netloc.rpartition("@")[2]

DEADLINE = 30
#: Were a refusal retried, this would keep trying far longer than the test's deadline.
PATIENT = kiwitrio.ReconnectPolicy(initial_delay=0.05, max_delay=0.2,
                                   startup_give_up_after=600.0)


def _with(url: str, *, password: str | None = None, vhost: str | None = None) -> str:
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if password is not None:
        netloc = f"{parts.username}:{password}@{parts.hostname}:{parts.port}"
    path = parts.path if vhost is None else "/" + urllib.parse.quote(vhost, safe="")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, path=path))


@pytest.fixture
def attempts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The URL of every connection attempt made to a real broker."""
    made: list[str] = []
    connect = _session._AmqpSession.connect.__func__  # type: ignore[attr-defined]

    async def counting(cls: Any, bridge: Any, url: str, **kwargs: Any) -> Any:
        made.append(url)
        return await connect(cls, bridge, url, **kwargs)

    monkeypatch.setattr(_session._AmqpSession, "connect", classmethod(counting))
    return made


async def _refusal(url: str, names: Names, **options: Any) -> kiwitrio.ConnectionFailed:
    with trio.fail_after(DEADLINE), \
            pytest.raises(kiwitrio.ConnectionRefusedByBroker) as caught:
        async with kiwitrio.open_communicator(url, **names.kwargs(), **options):
            pass
    return caught.value


@pytest.mark.parametrize("reconnect", [PATIENT, None], ids=["policy", "no-policy"])
async def test_a_wrong_password_fails_at_once(
        names: Names, attempts: list[str], caplog: pytest.LogCaptureFixture,
        reconnect: kiwitrio.ReconnectPolicy | None) -> None:
    caplog.set_level(logging.INFO, logger="kiwitrio")
    url = _with(AMQP_URL, password="not-" + uuid.uuid4().hex)
    error = await _refusal(url, names, reconnect=reconnect)
    message = str(error)
    assert "\n" not in message
    assert "check the user name and password" in message
    assert BROKER in message and "'/'" in message  # the broker, the vhost
    assert "not-" not in message  # the password is not shown
    assert message.count("connect") <= 1  # no "could not connect to ...: cannot connect"
    assert isinstance(error, kiwitrio.ConnectionFailed)
    assert attempts == [url]  # not retried
    assert not [r for r in caplog.records if "failed (attempt" in r.getMessage()]


async def test_a_missing_vhost_fails_at_once_saying_how_to_make_it(
        names: Names, attempts: list[str]) -> None:
    vhost = f"{names.prefix}-no-such-vhost"
    url = _with(AMQP_URL, vhost=vhost)
    message = str(await _refusal(url, names, reconnect=PATIENT))
    assert "\n" not in message
    assert f"rabbitmqctl add_vhost {vhost}" in message
    assert "Expected one of" not in message
    assert "guest:guest" not in message
    assert attempts == [url]


async def test_the_sync_faces_raise_the_refusal_too(names: Names) -> None:
    import kiwitrio_sync

    url = _with(AMQP_URL, password="wrong")
    with pytest.raises(kiwitrio_sync.ConnectionRefusedByBroker, match="password"):
        await trio.to_thread.run_sync(
            lambda: kiwitrio_sync.connect(url, **names.kwargs(), reconnect=PATIENT))


async def test_a_url_that_cannot_be_parsed_is_a_value_error_before_connecting(
        names: Names, attempts: list[str]) -> None:
    with pytest.raises(ValueError, match="bad broker URL amqp://guest:\\*\\*\\*@h:notaport/"):
        async with kiwitrio.open_communicator("amqp://guest:pw@h:notaport/", **names.kwargs()):
            pass
    assert attempts == []
