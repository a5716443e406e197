# ruff: noqa: RUF001 - the report prints multiplication signs on purpose
"""A/B of two kiwitrio trees on the suite's workloads, alternated in one run.

    python benchmarks/ab.py A_DIR B_DIR [--repeat 5] [--workload tasks ...] [--quick]

``A_DIR`` and ``B_DIR`` hold a ``kiwitrio`` package each (for instance ``git archive REV |
tar -x -C A_DIR``); each run puts its directory first on ``PYTHONPATH``, so its client and its
workers import that tree. The runs alternate A, B, B, A, ... (an ABBA order, so that a drift of
the machine's load hits both alike); the medians and the median of the per-pair B/A ratios are
printed. Figures are the suite's (``client_kiwitrio.py``), on the bridge ``KIWITRIO_BRIDGE``
names (default: the thread bridge).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from typing import Any

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import run
from benchmarks._common import DEFAULT_URL, new_prefix

KEYS = ["task_rate_1KiB", "task_rate_64KiB", "publish_rate", "consume_rate", "rpc_median_ms",
        "rpc_p99_ms", "rpc_concurrent_rate", "broadcast_rate_1", "broadcast_rate_10",
        "task_cpu_1KiB", "publish_cpu", "consume_cpu", "broker_task_cpu_1KiB",
        "broker_publish_cpu", "broker_consume_cpu"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workload", action="append", choices=run.SUITE_WORKLOADS)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--url", default=DEFAULT_URL)
    args = parser.parse_args()
    profile = run.PROFILES["quick" if args.quick else "default"]
    workloads = args.workload or ["tasks", "publish", "consume"]
    figures: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
    prefix = new_prefix("ab")
    try:
        for rep in range(args.repeat):
            for side in ("A", "B") if rep % 2 == 0 else ("B", "A"):
                os.environ["PYTHONPATH"] = os.path.abspath(args.a if side == "A" else args.b)
                config = run.client_config(profile, "kiwitrio", args.url, f"{prefix}-{rep}{side}",
                                           workloads)
                result = run.run_client("kiwitrio", sys.executable, config, 600.0)
                if result["errors"]:
                    print(f"{side} {rep}: {result['errors']}", file=sys.stderr)
                figures[side].append(result["metrics"])
    finally:
        run.sweep(args.url, prefix)
    print("| figure | A | B | B/A (median of pairs) |")
    print("|---|---:|---:|---:|")
    for key in KEYS:
        pairs = [(a[key], b[key]) for a, b in zip(figures["A"], figures["B"], strict=True)
                 if key in a and key in b]
        if not pairs:
            continue
        a_median = statistics.median(a for a, _ in pairs)
        b_median = statistics.median(b for _, b in pairs)
        ratio = statistics.median(b / a for a, b in pairs)
        print(f"| {key} | {a_median:,.2f} | {b_median:,.2f} | {ratio:.2f}× |")
        print(f"{key}: " + " ".join(f"{a:,.0f}/{b:,.0f}" for a, b in pairs), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
