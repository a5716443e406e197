"""``kiwitrio worker --tracing``: the worker's task spans, through the real entry point."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("opentelemetry.sdk.trace")

from .conftest import Names
from .test_cli import Background, background, cli_env, flags, run

__all__ = ["background", "cli_env"]  # fixtures, used by name

pytestmark = pytest.mark.timeout(120)

#: A task module that sets OpenTelemetry's global tracer provider, as an application (or
#: opentelemetry-instrument) would, writing each finished span as a JSON line.
TRACED_TASKS = '''
import json, os
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

class ToFile(SpanExporter):
    def export(self, spans):
        with open(os.environ["KT_SPANS"], "a") as out:
            for span in spans:
                out.write(json.dumps({"name": span.name, "kind": span.kind.name}) + "\\n")
        return SpanExportResult.SUCCESS

provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(ToFile()))
trace.set_tracer_provider(provider)

def double(comm, task):
    return task * 2
'''


def test_worker_traces_its_tasks_with_tracing(
        names: Names, tmp_path: Path, cli_env: dict[str, str],
        background: Callable[..., Background]) -> None:
    (tmp_path / "kt_traced.py").write_text(TRACED_TASKS)
    spans = tmp_path / "spans.jsonl"
    env = {**cli_env, "KT_SPANS": str(spans)}
    worker = background("worker", "worker", "kt_traced:double", "--tracing", *flags(names),
                        env=env)
    worker.wait_for("kiwitrio worker ready")
    sent = run(cli_env, "send", "--json", "--wait", "--timeout", "60", "21", *flags(names))
    assert (sent.returncode, sent.stdout) == (0, "42\n"), sent
    assert worker.stop() == 0, worker.describe()
    recorded = [json.loads(line) for line in spans.read_text().splitlines()]
    assert {"name": f"process task {names.task_queue}", "kind": "CONSUMER"} in recorded


def test_tracing_without_opentelemetry_is_a_usage_error(cli_env: dict[str, str],
                                                        tmp_path: Path) -> None:
    # A module named opentelemetry that cannot be imported stands in for a missing one.
    (tmp_path / "opentelemetry").mkdir()
    (tmp_path / "opentelemetry" / "__init__.py").write_text("raise ImportError('absent', "
                                                            "name='opentelemetry')\n")
    result = run(cli_env, "worker", "kt_cli_tasks:square", "--tracing", "--url", "memory://")
    assert result.returncode == 2, result
    assert "pip install 'kiwitrio[tracing]'" in result.stderr, result
