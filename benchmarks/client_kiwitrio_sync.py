"""Benchmark client for kiwitrio_sync, the blocking API (portal thread).

    python benchmarks/client_kiwitrio_sync.py --config JSON

Blocking code gets concurrency from threads: sends come from ``THREADS`` threads sharing a
window of ``WINDOW`` unfinished round trips; RPC callers are ``RPC_CONCURRENCY`` threads. The
workers and listeners are ``worker_kiwitrio.py --api sync`` processes (plain-function
subscribers through kiwitrio_sync), so both ends use the blocking API.
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

import kiwitrio
import kiwitrio_sync
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
from benchmarks.client_kiwitrio import (
    RPC_ID,
    WORKER,
    options,
)

IMPL = "kiwitrio_sync"


def spawn_workers(group: Helpers, url: str, prefix: str, rpc: bool) -> None:
    for index in range(WORKER_PROCESSES):
        extra = ["--api", "sync"] + (["--rpc", RPC_ID] if rpc and index == 0 else [])
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

    def tasks_and_rpc(self) -> dict[str, Any]:
        prefix = f"{self.prefix}-tasks"
        self.leftovers.append(prefix)
        selected = self.config["workloads"]
        out: dict[str, Any] = {}
        with helpers() as group:
            spawn_workers(group, self.url, prefix, rpc="rpc" in selected)
            with kiwitrio_sync.connect(self.url, **options(prefix)) as comm:
                self.server_version = str(comm.server_properties.get("version", ""))
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
            group.stop()
        return out

    def publish_consume(self) -> dict[str, Any]:
        prefix = f"{self.prefix}-pub"
        self.leftovers.append(prefix)
        count = self.config["publish_count"]
        body = payload(DEFAULT_SIZE)
        out: dict[str, Any] = {}
        with kiwitrio_sync.connect(self.url, **options(prefix, task_prefetch_count=PREFETCH),
                                   ) as comm:

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
                    if not all_seen.wait(120):
                        raise TimeoutError(f"consumed {seen} of {total}")
                    out["consume_rate"] = total / (time.perf_counter() - start)
                comm.remove_task_subscriber(subscriber)
        return out

    def broadcasts(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        body = payload(DEFAULT_SIZE)
        for listeners, count in self.config["broadcast"]:
            prefix = f"{self.prefix}-bc{listeners}"
            self.leftovers.append(prefix)
            with helpers() as group:
                spawn_listeners(group, WORKER, self.url, prefix, listeners, count,
                                ["--api", "sync"])
                with kiwitrio_sync.connect(self.url, **options(prefix)) as comm:
                    group.wait_for("ready")
                    for _ in range(self.warmup):
                        comm.broadcast_send(body, sender=SENDER, subject="warmup.x")
                    start = time.monotonic()
                    threaded_sends(lambda: comm.broadcast_send(body, sender=SENDER,
                                                               subject=SUBJECT),
                                   count, wait_results=False)
                    done = group.wait_for("done", timeout=broadcast_timeout(listeners, count))
                group.stop()
            end = max(float(line.split()[1]) for line in done)
            out[f"broadcast_rate_{listeners}"] = listeners * count / (end - start)
        return out

    def inflight(self) -> dict[str, Any]:
        prefix = f"{self.prefix}-inflight"
        self.leftovers.append(prefix)
        count = self.config["inflight_count"]
        body = payload(DEFAULT_SIZE)
        with kiwitrio_sync.connect(self.url, **options(prefix)) as comm:
            comm.task_send(body, no_reply=True)
            probe = MemoryProbe()
            send_s, futures = threaded_sends(lambda: comm.task_send(body), count,
                                             window=count, wait_results=False)
            held = probe.now()
            with helpers() as group:
                start = time.perf_counter()
                spawn_workers(group, self.url, prefix, rpc=False)
                for future in futures:
                    future.result(600)
                drain_s = time.perf_counter() - start
                group.stop()
            futures.clear()
            after = probe.now()
            probe.stop()
        return inflight_metrics(count, held, after, send_s, drain_s)


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
        "python": platform.python_version(), "kiwitrio": kiwitrio.__version__,
        "kiwitrio_from": os.path.dirname(os.path.dirname(kiwitrio.__file__)),
        "rabbitmq": client.server_version,
    })


if __name__ == "__main__":
    main()
