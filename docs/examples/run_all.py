"""Run every example in this directory and check the docs quote them verbatim.

    python docs/examples/run_all.py

Each example script must exit with status 0 within TIMEOUT seconds; each example test file
(``test_*.py``) must pass under pytest. The amqp examples need the broker at
amqp://guest:guest@127.0.0.1:5672/; yaml_encoding.py needs PyYAML (skipped without it). In
docs/*.md (and the pages in its subdirectories), a code block right after a line
``<!-- example: NAME.py -->`` must be the file's exact content.

Every other ``python`` block in the pages and in README.md is a fragment, and runs too (see
``fragments()``): on the in-memory broker, inside a communicator block when it awaits, with
the names it uses but does not define (``url``, ``comm``, ``task``...) made up beforehand.

tests/test_docs.py runs the same checks under pytest.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

TIMEOUT = 60
HERE = Path(__file__).resolve().parent
DOCS = HERE.parent
MARKED_BLOCK = re.compile(r"<!-- example: (\S+) -->\n```python\n(.*?)```\n", re.DOTALL)
#: Modules that some examples import and kiwitrio does not depend on.
OPTIONAL_MODULES = {"yaml": "PyYAML"}


def pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def check_quotes() -> list[str]:
    problems = []
    for page in pages():
        for name, code in MARKED_BLOCK.findall(page.read_text()):
            path = HERE / name
            where = page.relative_to(DOCS)
            if not path.exists():
                problems.append(f"{where}: quotes missing example {name}")
            elif path.read_text() != code:
                problems.append(f"{where}: the block for {name} differs from the file")
    return problems


def examples() -> list[Path]:
    """The example scripts and example test files (not this file)."""
    return [path for path in sorted(HERE.glob("*.py")) if path.name != Path(__file__).name]


def missing_requirement(path: Path) -> str | None:
    """The package an example needs and that is not installed, if any."""
    text = path.read_text()
    for module, package in OPTIONAL_MODULES.items():
        if f"import {module}" in text and importlib.util.find_spec(module) is None:
            return package
    return None


def command(path: Path, *pytest_options: str) -> list[str]:
    """How to run an example: a script with Python, a test file with pytest."""
    if path.name.startswith("test_"):
        return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *pytest_options,
                str(path)]
    return [sys.executable, str(path)]


def _run(command: list[str], cwd: Path | str, label: str, timeout: float) -> str | None:
    """Run ``command``; a description of what went wrong (named ``label``), or None."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    except subprocess.TimeoutExpired:
        return f"{label}: still running after {timeout} s"
    if done.returncode != 0:
        output = (done.stdout + done.stderr)[-3000:]
        return f"{label}: exit status {done.returncode}\n{output}"
    return None


def run_example(path: Path, timeout: float = TIMEOUT) -> str | None:
    """Run one example; a description of what went wrong, or None."""
    return _run(command(path), HERE, path.name, timeout)


#: The broker URL fragments show; they run on the in-memory broker instead, so that they
#: leave nothing behind on a real one (the examples above cover RabbitMQ).
SHOWN_URL = "amqp://guest:guest@127.0.0.1:5672/"
#: Before a block: code that sets up what the fragment needs besides the usual names.
SETUP_COMMENT = re.compile(r"<!-- fragment setup: (.*?) -->")
#: Before a block: the fragment runs until it is cancelled (a worker); it gets this long.
FOREVER_COMMENT = "<!-- fragment runs until cancelled -->"
FOREVER_SECONDS = 1.0
#: A fragment that should end gets this long.
FRAGMENT_SECONDS = 30

#: Names that fragments use without defining them, as the surrounding text describes them.
PRELUDE = """\
import pytest
import trio
import kiwitrio
import kiwitrio_sync

url = "memory://docs-fragment"
options = {}
task = 7
msg = "status?"
body = {"pk": 1}


def subscriber(comm, *message):
    return message[0] if message else None


work = subscriber
"""


@dataclasses.dataclass
class Fragment:
    """An unmarked ``python`` block of a page."""

    where: str  # page:line
    code: str
    setup: str = ""
    forever: bool = False

    @functools.cached_property
    def kind(self) -> str:
        """``pytest`` (defines tests), ``async`` (awaits at top level) or ``script``."""
        if re.search(r"^(async )?def test_", self.code, re.MULTILINE):
            return "pytest"
        try:
            compile(self.code, self.where, "exec")
        except SyntaxError:
            return "async"  # 'await' outside a function: it runs inside one
        return "script"

    def program(self) -> str:
        code = self.code.replace(SHOWN_URL, "memory://docs-fragment")
        if self.kind == "pytest":
            return PRELUDE + "\n" + self.code
        if self.kind == "script":
            return PRELUDE + self.setup + "\n" + code
        body = textwrap.indent(self.setup + "\n" + code, " " * 12)
        deadline = FOREVER_SECONDS if self.forever else FRAGMENT_SECONDS
        check = ("    assert scope.cancelled_caught, 'expected to run until cancelled'\n"
                 if self.forever else
                 f"    assert not scope.cancelled_caught, 'still running after {deadline} s'\n")
        return (PRELUDE + "\n\nasync def fragment():\n"
                f"    with trio.move_on_after({deadline}) as scope:\n"
                "        async with kiwitrio.open_communicator(url) as comm:\n"
                f"{body}\n"
                f"{check}\n\ntrio.run(fragment)\n")


def fragments() -> list[Fragment]:
    """The unmarked ``python`` blocks of docs/*.md and README.md."""
    found = []
    for page in [*pages(), DOCS.parent / "README.md"]:
        lines = page.read_text().splitlines()
        where = page.relative_to(DOCS.parent)
        index = 0
        while index < len(lines):
            if lines[index] != "```python":
                index += 1
                continue
            end = lines.index("```", index + 1)
            before = lines[index - 1] if index else ""
            if "<!-- example:" not in before:
                setup = SETUP_COMMENT.search(before)
                found.append(Fragment(
                    where=f"{where}:{index + 1}",
                    code="\n".join(lines[index + 1:end]) + "\n",
                    setup=setup.group(1).replace("; ", "\n") if setup else "",
                    forever=before == FOREVER_COMMENT,
                ))
            index = end + 1
    return found


def run_fragment(fragment: Fragment, timeout: float = TIMEOUT) -> str | None:
    """Run one fragment in a subprocess; a description of what went wrong, or None."""
    with tempfile.TemporaryDirectory(prefix="kiwitrio-docs-") as directory:
        # Named test_*: a "pytest" fragment runs under pytest, the others as scripts.
        name = "test_fragment.py" if fragment.kind == "pytest" else "fragment.py"
        path = Path(directory) / name
        path.write_text(fragment.program())
        return _run(command(path, "-o", "trio_mode=true"), directory,
                    f"{fragment.where} ({fragment.kind} fragment)", timeout)


def run_fragments() -> list[str]:
    problems = []
    for fragment in fragments():
        problem = run_fragment(fragment)
        print(f"{'ok  ' if problem is None else 'FAIL'} {fragment.where} ({fragment.kind})")
        if problem is not None:
            problems.append(problem)
    return problems


def run_examples() -> list[str]:
    problems = []
    for path in examples():
        package = missing_requirement(path)
        if package is not None:
            print(f"SKIP {path.name} (needs {package})")
            continue
        start = time.monotonic()
        problem = run_example(path)
        status = "ok  " if problem is None else "FAIL"
        print(f"{status} {path.name} ({time.monotonic() - start:.1f} s)")
        if problem is not None:
            problems.append(problem)
    return problems


def main() -> None:
    problems = check_quotes() + run_examples() + run_fragments()
    for problem in problems:
        print(problem)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
