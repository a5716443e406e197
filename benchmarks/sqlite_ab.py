"""Task round trips and RPC latency, alternating variants: sqlite against RabbitMQ, or one
kiwitrio source tree against another (issue 16).

    python benchmarks/sqlite_ab.py [--repeat 5] [--tasks 1000] [--rpc 300]
        VARIANT [VARIANT ...]

A VARIANT is ``label=URL`` or ``label=URL::SRC``: SRC is a directory holding a ``kiwitrio``
package (e.g. ``git archive COMMIT kiwitrio | tar -x -C SRC``), put first on the client's and
its workers' ``PYTHONPATH``. A ``sqlite:`` URL may say ``{db}``: a fresh file for each run.
Each repetition runs every variant once (the order rotates), through
``benchmarks/client_kiwitrio.py`` (2 worker processes, 200 round trips in flight, 1 KiB);
the table gives each run, then the medians, and each variant's rate as a share of the first
variant's in the same repetition (the machine's load changes from one minute to the next).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import HERE, RESULT_MARK, ROOT, new_prefix


def parse_variant(text: str) -> tuple[str, str, str | None]:
    label, _, rest = text.partition("=")
    url, _, src = rest.partition("::")
    return label, url, src or None


def run_once(label: str, url: str, src: str | None, args: argparse.Namespace,
             scratch: str, rep: int) -> dict[str, Any]:
    if "{db}" in url:
        directory = tempfile.mkdtemp(dir=scratch)
        url = url.replace("{db}", os.path.join(directory, "bench.db"))
    config = {"warmup": 20, "task_sizes": [1024], "task_counts": {"1024": args.tasks},
              "publish_count": 0, "rpc_latency_count": args.rpc,
              "rpc_concurrent_count": args.rpc, "broadcast": [], "inflight_count": 0,
              "url": url, "prefix": new_prefix(f"ab{rep}"), "workloads": ["tasks", "rpc"],
              "impl": "kiwitrio"}
    env = dict(os.environ, KIWITRIO_BRIDGE="thread")
    if src:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    load = os.getloadavg()[0]
    done = subprocess.run([sys.executable, os.path.join(HERE, "client_kiwitrio.py"),
                           "--config", json.dumps(config)], stdout=subprocess.PIPE,
                          text=True, cwd=ROOT, env=env, timeout=600, check=False)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            metrics = json.loads(line[len(RESULT_MARK):])["metrics"]
            return {"label": label, "rep": rep, "load": load,
                    "tasks": metrics.get("task_rate_1KiB", float("nan")),
                    "rpc_ms": metrics.get("rpc_median_ms", float("nan")),
                    "rpc_p99_ms": metrics.get("rpc_p99_ms", float("nan"))}
    raise RuntimeError(f"{label}: the client exited with {done.returncode} and no result")


def report(runs: list[dict[str, Any]], labels: list[str]) -> str:
    lines = ["| rep | variant | load | task round trips/s | share of first | RPC median ms "
             "| RPC p99 ms |", "|---:|---|---:|---:|---:|---:|---:|"]
    firsts = {r["rep"]: r["tasks"] for r in runs if r["label"] == labels[0]}
    for r in runs:
        share = r["tasks"] / firsts[r["rep"]]
        r["share"] = share
        lines.append(f"| {r['rep'] + 1} | {r['label']} | {r['load']:.1f} | {r['tasks']:.0f} "
                     f"| {share:.0%} | {r['rpc_ms']:.2f} | {r['rpc_p99_ms']:.2f} |")
    lines += ["", "| variant | median round trips/s | median share of first "
              "| min-max share | median RPC ms |", "|---|---:|---:|---:|---:|"]
    for label in labels:
        mine = [r for r in runs if r["label"] == label]
        shares = [r["share"] for r in mine]
        lines.append(f"| {label} | {statistics.median(r['tasks'] for r in mine):.0f} "
                     f"| {statistics.median(shares):.0%} | {min(shares):.0%}-{max(shares):.0%} "
                     f"| {statistics.median(r['rpc_ms'] for r in mine):.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--rpc", type=int, default=300)
    args = parser.parse_args()
    variants = [parse_variant(v) for v in args.variants]
    labels = [v[0] for v in variants]
    scratch = tempfile.mkdtemp(prefix="kt-ab-")
    runs: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        for rep in range(args.repeat):
            shift = rep % len(variants)
            for label, url, src in variants[shift:] + variants[:shift]:
                run = run_once(label, url, src, args, scratch, rep)
                print(f"[{time.monotonic() - started:5.0f} s] {json.dumps(run)}", flush=True)
                runs.append(run)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    runs.sort(key=lambda r: (r["rep"], labels.index(r["label"])))
    print(report(runs, labels))
    return 0


if __name__ == "__main__":
    sys.exit(main())
