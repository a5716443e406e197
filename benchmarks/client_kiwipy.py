"""Benchmark client for kiwiPy 0.9's RmqThreadCommunicator. Runs in the kiwiPy environment
(kiwiPy 0.9 needs aio-pika 9.5; kiwitrio needs 10), made by ``run.py`` or ``nox -s bench``.

    python benchmarks/client_kiwipy.py --config JSON

Same drivers as the kiwitrio_sync client (threads sharing a window), kiwiPy's defaults (YAML
encoding, ``connect_robust``); workers and listeners are ``worker_kiwipy.py`` processes.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import threading
import time
from typing import Any

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import aio_pika
import kiwipy
from kiwipy.rmq import RmqThreadCommunicator

from benchmarks._common import (
    DEFAULT_SIZE,
    PREFETCH,
    RPC_CONCURRENCY,
    SENDER,
    SUBJECT,
    WORKER_PROCESSES,
    Helpers,
    MemoryProbe,
    broadcast_timeout,
    clean_up,
    client_parser,
    cpu_cost,
    emit_result,
    helpers,
    inflight_metrics,
    latency_summary,
    payload,
    run_workloads,
    size_label,
    spawn_listeners,
    threaded_calls,
    threaded_sends,
    timed_calls,
    worker_argv,
)
from benchmarks.worker_kiwipy import connect

IMPL = "kiwiPy"
WORKER = "worker_kiwipy.py"
RPC_ID = "bench-echo"


def spawn_workers(group: Helpers, url: str, prefix: str, rpc: bool) -> None:
    for index in range(WORKER_PROCESSES):
        extra = ["--rpc", RPC_ID] if rpc and index == 0 else []
        group.spawn(worker_argv(WORKER, "tasks", url, prefix, *extra))


class Client:
    def __init__(self, config: dict[str, Any]) -> None:
        config["impl"] = IMPL
        self.config = config
        self.url: str = config["url"]
        self.prefix: str = config["prefix"]
        self.warmup: int = config["warmup"]
        self.server_version = ""
        self.leftovers: list[str] = []

    def open(self, prefix: str, **options: Any) -> RmqThreadCommunicator:
        self.leftovers.append(prefix)
        return connect(self.url, prefix, **options)

    def tasks_and_rpc(self) -> dict[str, Any]:
        prefix = f"{self.prefix}-tasks"
        selected = self.config["workloads"]
        out: dict[str, Any] = {}
        with helpers() as group:
            spawn_workers(group, self.url, prefix, rpc="rpc" in selected)
            comm = self.open(prefix)
            try:
                self.server_version = _text(comm.server_properties.get("version", ""))
                group.wait_for("ready")
                if "tasks" in selected:
                    for size in self.config["task_sizes"]:
                        count = self.config["task_counts"][str(size)]
                        body = payload(size)
                        threaded_sends(lambda body=body: comm.task_send(body), self.warmup)
                        with cpu_cost(out, f"task_cpu_{size_label(size)}", count):
                            elapsed, _ = threaded_sends(lambda body=body: comm.task_send(body),
                                                        count)
                        out[f"task_rate_{size_label(size)}"] = count / elapsed
                if "rpc" in selected:
                    body = payload(DEFAULT_SIZE)

                    def call() -> None:
                        comm.rpc_send(RPC_ID, body).result(60)

                    timed_calls(call, self.warmup)
                    summary = latency_summary(timed_calls(call, self.config["rpc_latency_count"]))
                    count = self.config["rpc_concurrent_count"]
                    elapsed = threaded_calls(call, count, RPC_CONCURRENCY)
                    out.update({"rpc_median_ms": summary["median_ms"],
                                "rpc_p99_ms": summary["p99_ms"],
                                "rpc_concurrent_rate": count / elapsed})
            finally:
                comm.close()
            group.stop()
        return out

    def publish_consume(self) -> dict[str, Any]:
        prefix = f"{self.prefix}-pub"
        count = self.config["publish_count"]
        body = payload(DEFAULT_SIZE)
        out: dict[str, Any] = {}
        comm = self.open(prefix, task_prefetch_count=PREFETCH)
        try:

            def publish() -> None:
                comm.task_send(body, no_reply=True)

            threaded_sends(publish, self.warmup, wait_results=False)
            with cpu_cost(out, "publish_cpu", count):
                elapsed, _ = threaded_sends(publish, count, wait_results=False)
            out["publish_rate"] = count / elapsed
            if "consume" in self.config["workloads"]:
                total = count + self.warmup
                seen = 0
                lock = threading.Lock()
                all_seen = threading.Event()

                def consume(_comm: Any, _task: Any) -> None:
                    nonlocal seen
                    with lock:
                        seen += 1
                        if seen == total:
                            all_seen.set()

                with cpu_cost(out, "consume_cpu", total):
                    start = time.perf_counter()
                    subscriber = comm.add_task_subscriber(consume)
                    if not all_seen.wait(300):
                        raise TimeoutError(f"consumed {seen} of {total}")
                    out["consume_rate"] = total / (time.perf_counter() - start)
                comm.remove_task_subscriber(subscriber)
        finally:
            comm.close()
        return out

    def broadcasts(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        body = payload(DEFAULT_SIZE)
        for listeners, count in self.config["broadcast"]:
            prefix = f"{self.prefix}-bc{listeners}"
            with helpers() as group:
                spawn_listeners(group, WORKER, self.url, prefix, listeners, count, [])
                comm = self.open(prefix)
                try:
                    group.wait_for("ready")
                    for _ in range(self.warmup):
                        comm.broadcast_send(body, sender=SENDER, subject="warmup.x")
                    start = time.monotonic()
                    threaded_sends(lambda comm=comm: comm.broadcast_send(
                        body, sender=SENDER, subject=SUBJECT), count, wait_results=False)
                    done = group.wait_for("done", timeout=broadcast_timeout(listeners, count))
                finally:
                    comm.close()
                group.stop()
            end = max(float(line.split()[1]) for line in done)
            out[f"broadcast_rate_{listeners}"] = listeners * count / (end - start)
        return out

    def inflight(self) -> dict[str, Any]:
        prefix = f"{self.prefix}-inflight"
        count = self.config["inflight_count"]
        body = payload(DEFAULT_SIZE)
        comm = self.open(prefix)
        try:
            comm.task_send(body, no_reply=True)
            probe = MemoryProbe()
            send_s, futures = threaded_sends(lambda: comm.task_send(body), count,
                                             window=count, wait_results=False)
            held = probe.now()
            with helpers() as group:
                start = time.perf_counter()
                spawn_workers(group, self.url, prefix, rpc=False)
                for future in futures:
                    future.result(900)
                drain_s = time.perf_counter() - start
                group.stop()
            futures.clear()
            after = probe.now()
            probe.stop()
        finally:
            comm.close()
        return inflight_metrics(count, held, after, send_s, drain_s)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def main() -> None:
    args = client_parser(__doc__.splitlines()[0]).parse_args()
    config = json.loads(args.config)
    client = Client(config)
    groups = [
        ("tasks+rpc", ["tasks", "rpc"], client.tasks_and_rpc),
        ("publish+consume", ["publish", "consume"], client.publish_consume),
        ("broadcast", ["broadcast"], client.broadcasts),
        ("inflight", ["inflight"], client.inflight),
    ]
    try:
        metrics, errors = run_workloads(config, groups)
    finally:
        clean_up(config["url"], client.leftovers)
    emit_result(IMPL, metrics, errors, {
        "python": platform.python_version(), "kiwipy": kiwipy.__version__,
        "kiwipy_aio_pika": aio_pika.__version__, "rabbitmq": client.server_version,
    })


if __name__ == "__main__":
    main()
