"""Run every example in this directory and check the docs quote them verbatim.

    python docs/examples/run_all.py

Each example must exit with status 0 within TIMEOUT seconds. The amqp examples need the
broker at amqp://guest:guest@127.0.0.1:5672/; yaml_encoding.py needs PyYAML (skipped
without it). In docs/*.md, a code block right after a line ``<!-- example: NAME.py -->``
must be the file's exact content.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import time
from pathlib import Path

TIMEOUT = 60
HERE = Path(__file__).resolve().parent
DOCS = HERE.parent
MARKED_BLOCK = re.compile(r"<!-- example: (\S+) -->\n```python\n(.*?)```\n", re.DOTALL)


def check_quotes() -> list[str]:
    problems = []
    for page in sorted(DOCS.glob("*.md")):
        for name, code in MARKED_BLOCK.findall(page.read_text()):
            path = HERE / name
            if not path.exists():
                problems.append(f"{page.name}: quotes missing example {name}")
            elif path.read_text() != code:
                problems.append(f"{page.name}: the block for {name} differs from the file")
    return problems


def run_examples() -> list[str]:
    problems = []
    for path in sorted(HERE.glob("*.py")):
        if path.name == Path(__file__).name:
            continue
        if "import yaml" in path.read_text() and importlib.util.find_spec("yaml") is None:
            print(f"SKIP {path.name} (needs PyYAML)")
            continue
        start = time.monotonic()
        try:
            done = subprocess.run([sys.executable, str(path)], capture_output=True, text=True,
                                  timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            problems.append(f"{path.name}: still running after {TIMEOUT} s")
            continue
        took = time.monotonic() - start
        status = "ok  " if done.returncode == 0 else "FAIL"
        print(f"{status} {path.name} ({took:.1f} s)")
        if done.returncode != 0:
            problems.append(f"{path.name}: exit status {done.returncode}\n{done.stderr[-2000:]}")
    return problems


def main() -> None:
    problems = check_quotes() + run_examples()
    for problem in problems:
        print(problem)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
