# ruff: noqa: RUF001 - the report prints multiplication signs and en dashes on purpose
"""Turning the clients' results into tables, target checks and a plot.

Ratios are computed per repetition (each pairs runs made back to back in that repetition) and
summarised by their median and range over the repetitions; absolute figures likewise.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

REF = "aio-pika"
#: The floor: raw aiormq (aio-pika's protocol layer) doing the same work, no target.
FLOOR = "aiormq"
ASYNC = "kiwitrio"
#: kiwitrio on the same-thread trio-asyncio bridge (ASYNC is on the default, thread bridge).
SAME_THREAD = "kiwitrio/trio-asyncio"
SYNC = "kiwitrio_sync"
KIWIPY = "kiwiPy"


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool | None  # None: not a figure of merit


METRICS = [
    Metric("task_rate_1KiB", "(a) task round trips, 1 KiB", "tasks/s", True),
    Metric("task_rate_64KiB", "(a) task round trips, 64 KiB", "tasks/s", True),
    Metric("publish_rate", "(b) confirmed publish", "msg/s", True),
    Metric("consume_rate", "(c) consume + ack", "msg/s", True),
    Metric("rpc_median_ms", "(d) RPC latency, median", "ms", False),
    Metric("rpc_p99_ms", "(d) RPC latency, p99", "ms", False),
    Metric("rpc_concurrent_rate", "(d) RPC, 16 concurrent callers", "calls/s", True),
    Metric("broadcast_rate_1", "(e) broadcast, 1 filtered listener", "deliveries/s", True),
    Metric("broadcast_rate_10", "(e) broadcast, 10 filtered listeners", "deliveries/s", True),
]
#: Client-process CPU per message: a check on the rates that other work on the machine skews
#: less (it still inflates it somewhat: caches, frequency). Lower is better.
CPU_METRICS = [
    Metric("task_cpu_1KiB", "(a) client CPU per task round trip, 1 KiB", "µs", False),
    Metric("task_cpu_64KiB", "(a) client CPU per task round trip, 64 KiB", "µs", False),
    Metric("publish_cpu", "(b) client CPU per confirmed publish", "µs", False),
    Metric("consume_cpu", "(c) client CPU per consume + ack", "µs", False),
]
INFLIGHT_METRICS = [
    Metric("inflight_count", "(f) tasks in flight", "tasks", None),
    Metric("inflight_traced_bytes_per_task", "(f) Python memory per pending task", "bytes",
           False),
    Metric("inflight_rss_bytes_per_task", "(f) RSS growth per pending task", "bytes", False),
    Metric("inflight_traced_mib", "(f) Python memory, all pending", "MiB", False),
    Metric("inflight_retained_fraction", "(f) of that still held after the drain", "%", False),
    Metric("inflight_send_rate", "(f) sends/s (under tracemalloc)", "tasks/s", None),
    Metric("inflight_drain_rate", "(f) drain incl. worker start (under tracemalloc)", "tasks/s",
           None),
]
#: The local broker's CPU over the same spans (from /proc/<beam.smp pid>/stat): it includes
#: whatever else used the broker meanwhile, so read it as an upper bound.
BROKER_METRICS = [
    Metric("broker_task_cpu_1KiB", "(a) broker CPU per task round trip, 1 KiB", "µs", False),
    Metric("broker_task_cpu_64KiB", "(a) broker CPU per task round trip, 64 KiB", "µs", False),
    Metric("broker_publish_cpu", "(b) broker CPU per confirmed publish", "µs", False),
    Metric("broker_consume_cpu", "(c) broker CPU per consume + ack", "µs", False),
]
BY_KEY = {metric.key: metric
          for metric in METRICS + CPU_METRICS + BROKER_METRICS + INFLIGHT_METRICS}

#: "10,000 in flight with bounded memory": Python memory per pending task at most this
#: many times aio-pika's in the same run (or, without an aio-pika figure, at most
#: INFLIGHT_MAX_BYTES_PER_TASK), and at most INFLIGHT_MAX_RETAINED of it held after the drain.
INFLIGHT_MAX_VS_REF = 1.5
INFLIGHT_MAX_BYTES_PER_TASK = 4096
INFLIGHT_MAX_RETAINED = 0.25


@dataclass(frozen=True)
class Target:
    op: str  # ">=" or "<="
    value: float

    def met(self, ratio: float) -> bool:
        return ratio >= self.value if self.op == ">=" else ratio <= self.value

    def text(self) -> str:
        shown = "1/4" if self.value == 0.25 and self.op == "<=" else f"{self.value:g}"
        return f"{'≥' if self.op == '>=' else '≤'} {shown}×"


# The targets of issue 12, for kiwitrio on both bridges (ASYNC and SAME_THREAD): at least as
# fast as aio-pika doing the same AMQP work on every rate, no slower on RPC latency. The ratio
# is impl / base for every metric.
VS_REF_TARGETS = {metric.key: Target(">=" if metric.higher_is_better else "<=", 1.0)
                  for metric in METRICS}
VS_KIWIPY_TARGETS = {"task_rate_1KiB": Target(">=", 10), "task_rate_64KiB": Target(">=", 10)}
#: kiwitrio_sync's time per message at most this many times kiwitrio's (async) on every workload.
SYNC_TARGET = 1.25


def spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def build(results: list[dict[str, Any]], meta: dict[str, Any], impls: list[str],
          ) -> dict[str, Any]:
    # samples[impl][metric] = {rep: value}
    samples: dict[str, dict[str, dict[int, float]]] = {impl: {} for impl in impls}
    errors = []
    counts: dict[str, dict[str, Any]] = {}
    for result in results:
        impl = result["impl"]
        for key, value in result["metrics"].items():
            samples.setdefault(impl, {}).setdefault(key, {})[result["rep"]] = value
        for name, error in result["errors"].items():
            errors.append({"impl": impl, "rep": result["rep"], "workload": name,
                           "error": error})
        config = result.get("config", {})
        if result["rep"] == 0 and _counts(config):
            counts.setdefault(impl, {}).update(_counts(config))
    loads = [value for result in results for value in result.get("load", [])
             if not math.isnan(value)]
    meta = {**meta, "load_average": spread(loads) if loads else None}
    summary = {impl: {key: spread(list(by_rep.values())) for key, by_rep in metrics.items()}
               for impl, metrics in samples.items()}
    comparisons = []

    def compare(kind: str, impl: str, base: str, key: str, target: Target | None) -> None:
        a, b = samples.get(impl, {}).get(key, {}), samples.get(base, {}).get(key, {})
        ratios = [a[rep] / b[rep] for rep in sorted(a.keys() & b.keys()) if b[rep]]
        if not ratios:
            return
        row: dict[str, Any] = {"kind": kind, "impl": impl, "base": base, "metric": key,
                               "ratio": spread(ratios)}
        if target is not None:
            row["target"] = {"op": target.op, "value": target.value, "text": target.text()}
            row["pass"] = target.met(row["ratio"]["median"])
        comparisons.append(row)

    for impl in (ASYNC, SAME_THREAD, SYNC, FLOOR):
        for metric in METRICS:
            compare("vs aio-pika", impl, REF, metric.key,
                    VS_REF_TARGETS.get(metric.key) if impl in (ASYNC, SAME_THREAD) else None)
    for impl in (ASYNC, SAME_THREAD, SYNC, KIWIPY, FLOOR):
        for metric in CPU_METRICS:
            compare("CPU vs aio-pika", impl, REF, metric.key, None)
    for metric in METRICS:
        # sync / async as a slowdown: time per message (rates: async/sync; latency: sync/async)
        key = metric.key
        if metric.higher_is_better:
            compare("sync slowdown", ASYNC, SYNC, key, Target("<=", SYNC_TARGET))
        else:
            compare("sync slowdown", SYNC, ASYNC, key, Target("<=", SYNC_TARGET))
    for impl in (ASYNC, SYNC):
        for metric in METRICS:
            compare("vs kiwiPy", impl, KIWIPY, metric.key, VS_KIWIPY_TARGETS.get(metric.key))

    inflight = _inflight_rows(summary, impls)
    return {"meta": meta, "impls": impls, "counts": counts, "samples": samples,
            "summary": summary, "comparisons": comparisons, "inflight": inflight,
            "errors": errors}


def inflight_bound(summary: dict[str, dict[str, dict[str, float]]]) -> float:
    """Bytes per pending task allowed: 1.5 times aio-pika's in the same run, when there is one."""
    ref = summary.get(REF, {}).get("inflight_traced_bytes_per_task")
    return ref["max"] * INFLIGHT_MAX_VS_REF if ref else INFLIGHT_MAX_BYTES_PER_TASK


def _inflight_rows(summary: dict[str, dict[str, dict[str, float]]], impls: list[str],
                   ) -> list[dict[str, Any]]:
    bound = inflight_bound(summary)
    rows = []
    for impl in impls:
        figures = summary.get(impl, {})
        per_task = figures.get("inflight_traced_bytes_per_task")
        retained = figures.get("inflight_retained_fraction")
        if per_task is None or retained is None:
            continue
        row = {"impl": impl, "count": figures["inflight_count"]["median"],
               "bytes_per_task": per_task["max"], "retained": retained["max"]}
        if impl in (ASYNC, SAME_THREAD, SYNC):
            row["bound"] = bound
            row["pass"] = (per_task["max"] <= bound
                           and retained["max"] <= INFLIGHT_MAX_RETAINED)
        rows.append(row)
    return rows


_WORKLOAD_OF = {"task_rate_1KiB": "tasks", "task_rate_64KiB": "tasks", "publish_rate": "publish",
                "consume_rate": "consume", "rpc_median_ms": "rpc", "rpc_p99_ms": "rpc",
                "rpc_concurrent_rate": "rpc", "broadcast_rate_1": "broadcast",
                "broadcast_rate_10": "broadcast"}


def _counts(config: dict[str, Any]) -> dict[str, Any]:
    selected = set(config.get("workloads", []))
    return {key: value for key, value in _all_counts(config).items()
            if _WORKLOAD_OF.get(key) in selected}


def _all_counts(config: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for size, count in config.get("task_counts", {}).items():
        out[f"task_rate_{int(size) // 1024}KiB"] = count
    for key, metric in (("publish_count", "publish_rate"), ("publish_count", "consume_rate"),
                        ("rpc_latency_count", "rpc_median_ms"),
                        ("rpc_latency_count", "rpc_p99_ms"),
                        ("rpc_concurrent_count", "rpc_concurrent_rate")):
        if key in config:
            out[metric] = config[key] + (config["warmup"] if metric == "consume_rate" else 0)
    for listeners, count in config.get("broadcast", []):
        out[f"broadcast_rate_{listeners}"] = count
    return out


# -- text ----------------------------------------------------------------------------------


def fmt(value: float, unit: str) -> str:
    if math.isnan(value):
        return "n/a"
    if unit == "%":
        return f"{value * 100:.0f}%"
    if unit in ("ms", "MiB"):
        return f"{value:.2f}"
    return f"{value:,.0f}"


def fmt_spread(figure: dict[str, float], unit: str) -> str:
    if figure["n"] < 2:
        return fmt(figure["median"], unit)
    return f"{fmt(figure['median'], unit)} ({fmt(figure['min'], unit)}–{fmt(figure['max'], unit)})"


def fmt_ratio(ratio: dict[str, float]) -> str:
    def one(value: float) -> str:
        return f"{value:.2f}" if value < 10 else f"{value:.1f}"

    if ratio["n"] < 2:
        return f"{one(ratio['median'])}×"
    return f"{one(ratio['median'])}× ({one(ratio['min'])}–{one(ratio['max'])})"


def _load_note(meta: dict[str, Any]) -> list[str]:
    load = meta.get("load_average")
    if not load:
        return []
    return [f"1-minute load average around the client runs: {load['min']:.1f}–{load['max']:.1f} "
            f"(median {load['median']:.1f}) on {meta['machine'].split()[0]} CPUs; other work on "
            "the machine widens the ranges.", ""]


def markdown(data: dict[str, Any]) -> str:
    meta = data["meta"]
    impls = data["impls"]
    params = meta["parameters"]
    lines = [
        "# kiwitrio benchmarks",
        "",
        f"{meta['date']}, commit {meta['commit']}, {meta['profile']} profile "
        f"({params['repeat']} repetition(s), implementations interleaved), "
        f"{meta['seconds']:.0f} s. Machine: {meta['machine']}, Python {meta['python']}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(meta["versions"].items())) + ".",
        "",
        f"Same broker, same bodies (1 KiB unless said; kiwitrio and kiwiPy encode a 1 KiB "
        f"string, aio-pika sends the bytes). Tasks are persistent, published with confirms; "
        f"{params['worker_processes']} worker processes with prefetch {params['prefetch']}; "
        f"async clients keep {params['window']} round trips in flight, blocking clients "
        f"(kiwitrio_sync, kiwiPy) send from {params['threads']} threads sharing that window. "
        f"kiwiPy runs {params['kiwipy_scale']:g}× the counts (it is slower); rates compare. "
        "Figures: median over repetitions (min–max).",
        "",
        *_load_note(meta),
        "## Absolute figures",
        "",
        "| workload | unit | " + " | ".join(impls) + " |",
        "|---|---|" + "---:|" * len(impls),
    ]
    summary = data["summary"]
    for metric in METRICS + CPU_METRICS + BROKER_METRICS + INFLIGHT_METRICS:
        cells = []
        for impl in impls:
            figure = summary.get(impl, {}).get(metric.key)
            cells.append(fmt_spread(figure, metric.unit) if figure else "—")
        if all(cell == "—" for cell in cells):
            continue
        unit = "" if metric.unit == "%" else metric.unit
        lines.append(f"| {metric.label} | {unit} | " + " | ".join(cells) + " |")

    lines += ["", "## Ratios and targets", "",
              "Ratios are impl / reference of the figure itself (for latency lower is better); "
              "\"sync slowdown\" is time per message with kiwitrio_sync over kiwitrio (async).",
              "", "| comparison | workload | ratio | target | |", "|---|---|---:|---|---|"]
    for row in data["comparisons"]:
        label = BY_KEY[row["metric"]].label
        if row["kind"] == "sync slowdown":
            what = "kiwitrio_sync / kiwitrio"
        else:
            what = f"{row['impl']} / {row['base']}"
        target = row.get("target")
        verdict = ("PASS" if row["pass"] else "**MISS**") if target else ""
        lines.append(f"| {what} | {label} | {fmt_ratio(row['ratio'])} | "
                     f"{target['text'] if target else ''} | {verdict} |")
    if data["inflight"]:
        lines += ["", "## Tasks in flight (10,000 in the default profile)", "",
                  f"Target (\"bounded memory\"): at most {INFLIGHT_MAX_VS_REF:g}× aio-pika's "
                  f"Python memory per pending task in the same run (here "
                  f"{inflight_bound(summary):,.0f} bytes), and at most "
                  f"{INFLIGHT_MAX_RETAINED:.0%} of it still held once the workers drained "
                  "them (hash tables that do not shrink stay).", "",
                  "| implementation | in flight | bytes/pending task | held after drain | |",
                  "|---|---:|---:|---:|---|"]
        for row in data["inflight"]:
            verdict = ("PASS" if row["pass"] else "**MISS**") if "pass" in row else ""
            lines.append(f"| {row['impl']} | {row['count']:,.0f} | {row['bytes_per_task']:,.0f} "
                         f"| {row['retained']:.0%} | {verdict} |")
    counted = data["counts"]
    if counted:
        lines += ["", "Messages per measurement (first repetition; RPC latency: calls):", "",
                  "| workload | " + " | ".join(counted) + " |",
                  "|---|" + "---:|" * len(counted)]
        for metric in METRICS:
            cells = [str(counts.get(metric.key, "—")) for counts in counted.values()]
            if metric.key == "rpc_p99_ms" or all(cell == "—" for cell in cells):
                continue
            lines.append(f"| {metric.label} | " + " | ".join(cells) + " |")
    if data["errors"]:
        lines += ["", "## Errors", ""]
        for error in data["errors"]:
            lines.append(f"- {error['impl']} (repetition {error['rep'] + 1}, {error['workload']}):"
                         f" {error['error']}")
    passed = [row for row in data["comparisons"] if "pass" in row]
    passed += [row for row in data["inflight"] if "pass" in row]
    lines += ["", f"Targets: {sum(1 for row in passed if row['pass'])} of {len(passed)} met."]
    return "\n".join(lines) + "\n"


# -- plot ----------------------------------------------------------------------------------


def plot(data: dict[str, Any], path: str) -> None:
    """Speed factors (higher is better) with their targets, client CPU and in-flight memory."""
    import os
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def factor(row: dict[str, Any], value: float) -> float:
        # Every panel shows "how much faster" (higher is better).
        metric = BY_KEY[row["metric"]]
        if row["kind"] == "sync slowdown":
            return 1 / value
        return value if metric.higher_is_better else 1 / value

    panels = [
        ("vs plain asyncio aio-pika", "vs aio-pika", [ASYNC, SAME_THREAD, SYNC], False,
         "speed relative to aio-pika (1 = as fast)"),
        ("vs kiwiPy 0.9", "vs kiwiPy", [ASYNC, SYNC], True,
         "times faster than kiwiPy (log scale)"),
        ("kiwitrio_sync vs kiwitrio (async)", "sync slowdown", [ASYNC], False,
         "kiwitrio_sync speed relative to async"),
    ]
    colours = {ASYNC: "#2a7ab9", SAME_THREAD: "#8e5ac8", SYNC: "#f08c2e"}
    labels = {ASYNC: "kiwitrio", SAME_THREAD: SAME_THREAD, SYNC: "kiwitrio_sync"}
    keys = [metric.key for metric in METRICS]
    fig = plt.figure(figsize=(16, 10))
    grid = fig.add_gridspec(2, 3, height_ratios=[1.6, 1])
    first = fig.add_subplot(grid[0, 0])
    axes = [first, fig.add_subplot(grid[0, 1], sharey=first),
            fig.add_subplot(grid[0, 2], sharey=first)]
    for ax in axes[1:]:
        ax.tick_params(labelleft=False)
    for ax, (title, kind, impls, log, xlabel) in zip(axes, panels, strict=True):
        rows = [row for row in data["comparisons"] if row["kind"] == kind]
        height = 0.8 / len(impls)
        for offset, impl in enumerate(impls):
            ys, xs, lo, hi = [], [], [], []
            for row in rows:
                if row["impl"] != impl and kind != "sync slowdown":
                    continue
                y = keys.index(row["metric"]) + (offset - (len(impls) - 1) / 2) * height
                values = sorted(factor(row, row["ratio"][k]) for k in ("min", "max"))
                mid = factor(row, row["ratio"]["median"])
                ys.append(y)
                xs.append(mid)
                lo.append(mid - values[0])
                hi.append(values[1] - mid)
                target = row.get("target")
                if target:
                    goal = target["value"]
                    metric = BY_KEY[row["metric"]]
                    if kind == "sync slowdown" or not metric.higher_is_better:
                        goal = 1 / goal
                    ax.plot([goal, goal], [y - height / 2, y + height / 2], color="black",
                            linewidth=2)
                    ax.annotate("PASS" if row["pass"] else "MISS",
                                (max(values[1], goal), y), xytext=(5, 0),
                                textcoords="offset points", va="center", fontsize=7,
                                color="green" if row["pass"] else "red")
            label = labels[impl] if kind != "sync slowdown" else "kiwitrio_sync"
            colour = colours[impl] if kind != "sync slowdown" else colours[SYNC]
            ax.barh(ys, xs, height=height * 0.9, xerr=[lo, hi], color=colour, label=label,
                    error_kw={"elinewidth": 1, "capsize": 2})
        ax.axvline(1, color="grey", linewidth=0.8, linestyle=":")
        if log:
            ax.set_xscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.legend(loc="lower right", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(keys)))
    axes[0].set_yticklabels([BY_KEY[key].label for key in keys], fontsize=8)
    axes[0].invert_yaxis()
    _plot_cpu(fig.add_subplot(grid[1, 0:2]), data, factor)
    _plot_memory(fig.add_subplot(grid[1, 2]), data)
    meta = data["meta"]
    fig.suptitle(f"kiwitrio benchmarks ({meta['date']}, {meta['commit']}, {meta['profile']}): "
                 "speed factors, higher is better; black ticks are targets, bars span "
                 "min–max over repetitions", fontsize=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # empty panels on partial runs
        fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


_COLOURS = {ASYNC: "#2a7ab9", SAME_THREAD: "#8e5ac8", SYNC: "#f08c2e", KIWIPY: "#7f7f7f",
            REF: "#4daf4a"}


def _plot_cpu(ax: Any, data: dict[str, Any], factor: Any) -> None:
    rows = [row for row in data["comparisons"] if row["kind"] == "CPU vs aio-pika"]
    impls = [impl for impl in (ASYNC, SAME_THREAD, SYNC, KIWIPY)
             if any(r["impl"] == impl for r in rows)]
    if not impls:
        ax.set_axis_off()
        return
    keys = [metric.key for metric in CPU_METRICS]
    height = 0.8 / max(1, len(impls))
    for offset, impl in enumerate(impls):
        ys, xs, lo, hi = [], [], [], []
        for row in rows:
            if row["impl"] != impl:
                continue
            y = keys.index(row["metric"]) + (offset - (len(impls) - 1) / 2) * height
            values = sorted(factor(row, row["ratio"][k]) for k in ("min", "max"))
            mid = factor(row, row["ratio"]["median"])
            ys.append(y)
            xs.append(mid)
            lo.append(mid - values[0])
            hi.append(values[1] - mid)
        ax.barh(ys, xs, height=height * 0.9, xerr=[lo, hi], color=_COLOURS[impl], label=impl,
                error_kw={"elinewidth": 1, "capsize": 2})
    ax.axvline(1, color="grey", linewidth=0.8, linestyle=":")
    ax.set_yticks(range(len(keys)))
    ax.set_yticklabels([BY_KEY[key].label for key in keys], fontsize=8)
    ax.invert_yaxis()
    ax.set_title("client CPU per message, relative to aio-pika (higher is better)", fontsize=10)
    ax.set_xlabel("aio-pika's CPU time / this implementation's (1 = as cheap)", fontsize=8)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)


def _plot_memory(ax: Any, data: dict[str, Any]) -> None:
    rows = data["inflight"]
    names = [row["impl"] for row in rows]
    values = [row["bytes_per_task"] for row in rows]
    ax.bar(names, values, color=[_COLOURS.get(name, "#999999") for name in names])
    bound = inflight_bound(data["summary"])
    ax.axhline(bound, color="black", linewidth=2)
    ax.text(len(names) - 0.5, bound, "bound", va="bottom", ha="right", fontsize=7)
    for index, row in enumerate(rows):
        ax.text(index, row["bytes_per_task"], f"{row['bytes_per_task']:,.0f} B\n"
                f"{row['count']:,.0f} pending\n{row['retained']:.0%} held after",
                ha="center", va="bottom", fontsize=7)
    ax.set_ylim(0, max([bound, *values]) * 1.35)
    ax.set_title("(f) Python memory per pending task", fontsize=10)
    ax.set_ylabel("bytes (tracemalloc)", fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
