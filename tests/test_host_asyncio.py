"""kiwitrio leaves the host process's asyncio alone (each program runs in a fresh interpreter).

``host_programs/asyncio_program.py`` is an asyncio program in AiiDA's and plumpy's style that
uses kiwitrio_sync for tasks, RPC and broadcasts; ``host_programs/trio_asyncio_program.py`` is
a Trio program with asyncio code of its own under trio-asyncio, beside a communicator.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import trio

from kiwitrio._bridge import trio_asyncio_unavailable

from .conftest import AMQP_URL, Names

PROGRAMS = Path(__file__).with_name("host_programs")
#: A fresh interpreter, imports, a connection and a few round trips; room for a loaded CI.
TIMEOUT = 90.0


async def run_program(script: str, *args: str) -> str:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("KIWITRIO_BRIDGE", None)  # the programs run on the defaults a user gets
    with trio.fail_after(TIMEOUT):
        done = await trio.run_process(
            [sys.executable, "-W", "error::RuntimeWarning", str(PROGRAMS / script), *args],
            capture_stdout=True, capture_stderr=True, check=False, env=env)
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, f"exit {done.returncode}\nstdout:\n{out}\nstderr:\n{err}"
    return out


@pytest.mark.parametrize("mode", ["run", "manual"])
async def test_an_asyncio_program_uses_kiwitrio_sync_untouched(mode: str, names: Names) -> None:
    out = await run_program("asyncio_program.py", AMQP_URL, names.prefix, mode)
    assert f"OK {mode}" in out


@pytest.mark.skipif(trio_asyncio_unavailable() is not None,
                    reason=str(trio_asyncio_unavailable()))
@pytest.mark.parametrize("bridge", ["auto", "thread", "trio-asyncio"])
async def test_a_trio_program_with_its_own_trio_asyncio_keeps_working(
        bridge: str, names: Names) -> None:
    out = await run_program("trio_asyncio_program.py", AMQP_URL, names.prefix, bridge)
    assert f"OK {bridge}" in out
