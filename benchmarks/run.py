"""The benchmark suite: kiwitrio (async), kiwitrio_sync, plain asyncio aio-pika and kiwiPy 0.9.

    python benchmarks/run.py [--quick] [--repeat R] [--url URL] [--impl NAME ...]
    python -m benchmarks ...           # the same
    nox -s bench [-- --quick ...]      # in a fresh environment, kiwiPy's made alongside

One run measures every implementation against the same broker with the same message sizes,
interleaving them across repetitions (the order rotates each repetition), and writes
``benchmarks/results/latest.md`` and ``latest.json`` and the plot ``docs/img/benchmarks.png``.
Each implementation runs in a client process of its own (``client_*.py``) with its own
worker/listener processes (``worker_*.py``). They put the repository at the *end* of
``sys.path``, so an installed kiwitrio wins over the working tree: ``nox -s bench`` installs a
snapshot at its start, and the whole run measures that one even if the tree changes meanwhile;
kiwiPy's run in a second virtual environment because kiwiPy 0.9 needs aio-pika 9.5 and kiwitrio
aio-pika 10 (``--kiwipy-python``, or ``.nox/bench-kiwipy-X.Y``, made on first use).

Workloads (bodies 1 KiB unless said): (a) task round trips end to end with 2 worker processes, 1
KiB and 64 KiB; (b) confirmed persistent publishes; (c) consume + ack of what (b) published; (d)
RPC latency one call at a time (median, p99) and concurrent RPC throughput; (e) broadcasts
fanned out to 1 and to 10 filtered listeners (deliveries per second); (f) 10,000 tasks in flight
from one client before any worker starts: Python memory (tracemalloc) and RSS per pending task,
and what stays after the workers drained them.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from typing import Any

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import report
from benchmarks._common import (
    DEFAULT_URL,
    HERE,
    NAME_PREFIX,
    PREFETCH,
    RESULT_MARK,
    ROOT,
    RPC_CONCURRENCY,
    THREADS,
    WINDOW,
    WORKER_PROCESSES,
    delete_names,
    log,
    new_prefix,
)

#: "aiormq" is the floor: aio-pika's protocol layer alone, on the task round trips, confirmed
#: publishes and consume + ack (benchmarks/client_aiormq.py).
IMPLS = ["aio-pika", "aiormq", "kiwitrio", "kiwitrio/trio-asyncio", "kiwitrio_sync", "kiwiPy"]
CLIENTS = {"aio-pika": "client_aiopika.py", "aiormq": "client_aiormq.py",
           "kiwitrio": "client_kiwitrio.py",
           "kiwitrio/trio-asyncio": "client_kiwitrio.py",
           "kiwitrio_sync": "client_kiwitrio_sync.py", "kiwiPy": "client_kiwipy.py"}
#: The asyncio bridge each kiwitrio implementation runs on (KIWITRIO_BRIDGE, which their
#: worker processes inherit): "kiwitrio" is the default, the thread bridge.
BRIDGES = {"kiwitrio": "thread", "kiwitrio/trio-asyncio": "trio-asyncio",
           "kiwitrio_sync": "thread"}
SUITE_WORKLOADS = ["tasks", "rpc", "publish", "consume", "broadcast"]
WORKLOADS = [*SUITE_WORKLOADS, "inflight"]
KIWIPY_REQUIREMENT = "kiwipy[rmq]==0.9.*"

#: Counts per workload. kiwiPy gets ``kiwipy_scale`` of each (it is much slower; rates and
#: per-task memory are comparable across counts), never fewer than KIWIPY_MIN.
PROFILES: dict[str, dict[str, Any]] = {
    "default": {
        "repeat": 5, "warmup": 20,
        "task_sizes": [1024, 65536], "task_counts": {"1024": 2000, "65536": 300},
        "publish_count": 4000, "rpc_latency_count": 500, "rpc_concurrent_count": 2000,
        "broadcast": [[1, 3000], [10, 400]], "inflight_count": 10000,
        "inflight_repeat": 1, "kiwipy_scale": 0.2, "kiwipy_inflight_count": 500,
    },
    "quick": {
        "repeat": 1, "warmup": 10,
        "task_sizes": [1024, 65536], "task_counts": {"1024": 600, "65536": 100},
        "publish_count": 2000, "rpc_latency_count": 200, "rpc_concurrent_count": 600,
        "broadcast": [[1, 1000], [10, 150]], "inflight_count": 3000,
        "inflight_repeat": 1, "kiwipy_scale": 0.2, "kiwipy_inflight_count": 200,
    },
}
KIWIPY_MIN = 20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/run.py", description="kiwitrio benchmark suite (see the module docstring)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("KIWITRIO_URL", DEFAULT_URL))
    parser.add_argument("--quick", action="store_true", help="a run of about a minute")
    parser.add_argument("--repeat", type=int, default=None,
                        help="repetitions (default 5, or 1 with --quick)")
    parser.add_argument("--impl", action="append", choices=IMPLS, default=None,
                        help="implementations to run (repeatable; default: all)")
    parser.add_argument("--workload", action="append", choices=WORKLOADS, default=None,
                        help="workloads to run (repeatable; default: all)")
    parser.add_argument("--inflight-count", type=int, default=None,
                        help="tasks in flight in workload (f) (default 10000)")
    parser.add_argument("--kiwipy-python", default=os.environ.get("KIWITRIO_BENCH_KIWIPY_PYTHON"),
                        help="python of an environment with kiwipy[rmq] 0.9 (default: "
                             ".nox/bench-kiwipy-X.Y, created if missing)")
    parser.add_argument("--results", default=os.path.join(HERE, "results"),
                        help="directory for latest.md and latest.json")
    parser.add_argument("--plot", default=os.path.join(ROOT, "docs", "img", "benchmarks.png"))
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--client-timeout", type=float, default=600.0,
                        help="seconds one client process may take")
    return parser.parse_args(argv)


# -- the kiwiPy environment ---------------------------------------------------------------------


def _has_kiwipy(python: str) -> bool:
    try:
        subprocess.run([python, "-c", "import kiwipy.rmq"], check=True, capture_output=True,
                       timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def kiwipy_python(explicit: str | None) -> str | None:
    """A python that can import kiwiPy 0.9's RMQ communicator, making its venv if needed."""
    if explicit:
        if not _has_kiwipy(explicit):
            log(f"{explicit} cannot import kiwipy.rmq: skipping kiwiPy")
            return None
        return explicit
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    env = os.path.join(ROOT, ".nox", f"bench-kiwipy-{version}")
    python = os.path.join(env, "bin", "python")
    if os.path.exists(python) and _has_kiwipy(python):
        return python
    log(f"making the kiwiPy environment {env} ({KIWIPY_REQUIREMENT}, Python {version})")
    try:
        subprocess.run([sys.executable, "-m", "venv", env], check=True)
        subprocess.run([python, "-m", "pip", "install", "--quiet", KIWIPY_REQUIREMENT],
                       check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        log(f"could not make the kiwiPy environment ({exc}): skipping kiwiPy")
        return None
    return python if _has_kiwipy(python) else None


# -- running the clients ------------------------------------------------------------------------


def client_config(profile: dict[str, Any], impl: str, url: str, prefix: str,
                  workloads: list[str]) -> dict[str, Any]:
    config = {key: profile[key] for key in (
        "warmup", "task_sizes", "task_counts", "publish_count", "rpc_latency_count",
        "rpc_concurrent_count", "broadcast", "inflight_count")}
    config.update(url=url, prefix=prefix, workloads=workloads, impl=impl)
    if impl == "kiwiPy":
        scale = profile["kiwipy_scale"]

        def scaled(count: int) -> int:
            return max(KIWIPY_MIN, round(count * scale))

        config["task_counts"] = {k: scaled(v) for k, v in config["task_counts"].items()}
        for key in ("publish_count", "rpc_latency_count", "rpc_concurrent_count"):
            config[key] = scaled(config[key])
        config["broadcast"] = [[listeners, scaled(count)]
                               for listeners, count in config["broadcast"]]
        config["inflight_count"] = min(config["inflight_count"],
                                       profile["kiwipy_inflight_count"])
        config["warmup"] = min(config["warmup"], 5)
    return config


def run_client(impl: str, python: str, config: dict[str, Any], timeout: float,
               ) -> dict[str, Any]:
    argv = [python, os.path.join(HERE, CLIENTS[impl]), "--config", json.dumps(config)]
    started = time.monotonic()
    load = [_load()]
    try:
        env = dict(os.environ)
        if impl in BRIDGES:
            env["KIWITRIO_BRIDGE"] = BRIDGES[impl]
        done = subprocess.run(argv, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                              timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"impl": impl, "metrics": {}, "errors": {"client": f"timed out after {timeout} s"},
                "meta": {}}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            result: dict[str, Any] = json.loads(line[len(RESULT_MARK):])
            result["seconds"] = time.monotonic() - started
            result["load"] = [*load, _load()]
            return result
    return {"impl": impl, "metrics": {},
            "errors": {"client": f"exited with {done.returncode} without a result"}, "meta": {}}


def sweep(url: str, run_prefix: str) -> None:
    """Delete anything left with this run's prefix (needs rabbitmqctl to list; else skipped)."""
    if not run_prefix.startswith(NAME_PREFIX) or not shutil.which("rabbitmqctl"):
        return
    found: dict[str, list[str]] = {}
    for kind in ("queues", "exchanges"):
        try:
            listing = subprocess.run(["rabbitmqctl", "-q", f"list_{kind}", "name"],
                                     capture_output=True, text=True, timeout=60, check=True)
        except (OSError, subprocess.SubprocessError):
            return
        found[kind] = [name for name in listing.stdout.split() if name.startswith(run_prefix)]
    if found["queues"] or found["exchanges"]:
        log(f"deleting leftovers: {found}")
        delete_names(url, found["queues"], found["exchanges"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    profile = dict(PROFILES["quick" if args.quick else "default"])
    if args.repeat is not None:
        profile["repeat"] = args.repeat
    if args.inflight_count is not None:
        profile["inflight_count"] = args.inflight_count
    impls = [impl for impl in IMPLS if impl in (args.impl or IMPLS)]
    workloads = args.workload or WORKLOADS
    pythons = {impl: sys.executable for impl in impls}
    if "kiwiPy" in impls:
        python = kiwipy_python(args.kiwipy_python)
        if python is None:
            impls = [impl for impl in impls if impl != "kiwiPy"]
        else:
            pythons["kiwiPy"] = python

    run_prefix = new_prefix()
    commit = _commit()  # now: the tree may change during the run
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    suite = [w for w in workloads if w in SUITE_WORKLOADS]
    log(f"benchmarks: {', '.join(impls)}; workloads {', '.join(workloads)}; "
        f"{profile['repeat']} repetition(s); names {run_prefix}-*")
    try:
        for rep in range(profile["repeat"]):
            order = impls[rep % len(impls):] + impls[:rep % len(impls)]
            phases = [("suite", suite)] if suite else []
            if "inflight" in workloads and rep < profile["inflight_repeat"]:
                phases.append(("inflight", ["inflight"]))
            for phase, selected in phases:
                for impl in order:
                    tag = impl.replace("-", "").replace("_", "").replace("/", "").lower()
                    prefix = f"{run_prefix}-{tag}{rep}"
                    log(f"[{time.monotonic() - started:5.0f} s] repetition {rep + 1}: {impl} "
                        f"({phase})")
                    config = client_config(profile, impl, args.url, prefix, selected)
                    result = run_client(impl, pythons[impl], config, args.client_timeout)
                    result.update(rep=rep, phase=phase, config=config)
                    for name, error in result["errors"].items():
                        log(f"  {impl} {name}: {error}")
                    results.append(result)
    finally:
        sweep(args.url, run_prefix)
    elapsed = time.monotonic() - started

    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit, "python": platform.python_version(),
        "machine": _machine(), "seconds": round(elapsed, 1),
        "profile": "quick" if args.quick else "default", "argv": sys.argv[1:],
        "parameters": {"worker_processes": WORKER_PROCESSES, "prefetch": PREFETCH,
                       "window": WINDOW, "threads": THREADS, "rpc_concurrency": RPC_CONCURRENCY,
                       **{k: v for k, v in profile.items()}},
        "versions": _versions(results),
    }
    data = report.build(results, meta, impls)
    os.makedirs(args.results, exist_ok=True)
    with open(os.path.join(args.results, "latest.json"), "w") as out:
        json.dump(data, out, indent=1)
    text = report.markdown(data)
    with open(os.path.join(args.results, "latest.md"), "w") as out:
        out.write(text)
    print(text)
    if not args.no_plot:
        try:
            report.plot(data, args.plot)
            log(f"plot: {os.path.relpath(args.plot, ROOT)}")
        except ImportError as exc:
            log(f"no plot ({exc}); pip install matplotlib")
    log(f"results: {os.path.relpath(args.results, ROOT)}/latest.md, latest.json "
        f"({elapsed:.0f} s)")
    return 0


def _load() -> float:
    """The 1-minute load average: other work on the machine skews the figures."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=ROOT, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, cwd=ROOT, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (" (with local changes)" if dirty.strip() else "")


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({model}), {platform.system()} {platform.release()}"


def _versions(results: list[dict[str, Any]]) -> dict[str, str]:
    versions: dict[str, str] = {}
    for result in results:
        for key, value in result.get("meta", {}).items():
            if value:
                versions.setdefault(key, str(value))
    for dist in ("trio", "trio-asyncio", "aio-pika", "aiormq", "pamqp", "cbor2"):
        try:
            versions.setdefault(dist, importlib.metadata.version(dist))
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


if __name__ == "__main__":
    sys.exit(main())
