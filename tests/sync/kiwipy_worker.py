"""An AiiDA-style daemon worker in its own process, for tests/sync/test_kiwipy_scenario.py.

Run as ``python -m tests.sync.kiwipy_worker URL PREFIX`` from the repository root. It makes
``import kiwipy`` resolve to kiwitrio's compatibility package first (as AiiDA would, before
plumpy is imported), connects a ``kiwipy.rmq.RmqThreadCommunicator`` on the test's names and
launches plumpy-like processes from tasks (tests/sync/plumpy_like.py). It prints ``ready``
once it takes tasks, and stops when its stdin closes.
"""

from __future__ import annotations

import sys
import threading

import kiwitrio_sync

kiwitrio_sync.install_kiwipy_alias()

import kiwipy  # type: ignore[import-not-found]  # noqa: E402 - after the alias

from tests.sync import plumpy_like  # noqa: E402


def main() -> None:
    url, prefix = sys.argv[1:3]
    assert kiwipy.__name__ == "kiwitrio_sync.kiwipy_compat"
    communicator = kiwipy.rmq.RmqThreadCommunicator.connect(
        connection_params={"url": url}, message_exchange=f"{prefix}.messages",
        task_exchange=f"{prefix}.tasks", task_queue=f"{prefix}.tasks",
        task_prefetch_count=8, testing_mode=True)
    stop, ready = threading.Event(), threading.Event()

    def stop_on_eof() -> None:
        sys.stdin.read()
        stop.set()

    def announce() -> None:
        ready.wait()
        print("ready", flush=True)

    threading.Thread(target=stop_on_eof, daemon=True).start()
    threading.Thread(target=announce, daemon=True).start()
    with communicator:
        plumpy_like.run_worker(communicator, stop, ready)


if __name__ == "__main__":
    main()
