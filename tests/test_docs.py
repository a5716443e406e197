"""The documentation stays true: its examples run, its quotes match, its references are complete.

- every docs/examples/*.py runs (scripts exit 0, example test files pass under pytest), each in
  a subprocess with a timeout; those that need PyYAML are skipped without it;
- every code block marked ``<!-- example: NAME.py -->`` in the pages is that file, verbatim;
- docs/configuration.md names every parameter of ``kiwitrio.open_communicator``, every field
  of ``kiwitrio.ReconnectPolicy`` and every extra of ``kiwitrio_sync.connect``;
- every page is in the site's navigation (mkdocs.yml).

The amqp examples need the broker at amqp://guest:guest@127.0.0.1:5672/, as the rest of the
suite does. The logic is shared with ``python docs/examples/run_all.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import inspect
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

import kiwitrio
import kiwitrio_sync

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
#: Per example; they take well under a second each on an idle machine.
EXAMPLE_TIMEOUT = 60


def _load_run_all() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_run_all", DOCS / "examples" / "run_all.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


run_all = _load_run_all()


@pytest.mark.parametrize("path", run_all.examples(), ids=lambda path: path.name)
def test_example_runs(path: Path) -> None:
    package = run_all.missing_requirement(path)
    if package is not None:
        pytest.skip(f"needs {package}")
    problem = run_all.run_example(path, timeout=EXAMPLE_TIMEOUT)
    assert problem is None, problem


def test_quoted_examples_match_their_files() -> None:
    assert run_all.check_quotes() == []


def test_every_example_script_is_quoted_or_linked() -> None:
    text = "\n".join(page.read_text() for page in run_all.pages())
    unmentioned = [path.name for path in run_all.examples() if path.name not in text]
    assert unmentioned == [], "examples no page shows or links to"


def _mentioned(page: Path, names: list[str]) -> list[str]:
    text = page.read_text()
    return [name for name in names if f"`{name}`" not in text]


def test_configuration_reference_names_every_option() -> None:
    page = DOCS / "configuration.md"
    options = list(inspect.signature(kiwitrio.open_communicator).parameters)
    fields = [field.name for field in dataclasses.fields(kiwitrio.ReconnectPolicy)]
    sync_extras = [name for name, parameter in inspect.signature(kiwitrio_sync.connect)
                   .parameters.items() if parameter.kind is not inspect.Parameter.VAR_KEYWORD]
    assert len(options) > 10 and len(fields) > 5  # the signatures were read
    assert _mentioned(page, options) == [], "open_communicator options missing from the page"
    assert _mentioned(page, fields) == [], "ReconnectPolicy fields missing from the page"
    assert _mentioned(page, sync_extras) == [], "kiwitrio_sync.connect options missing"


def test_configuration_reference_gives_the_current_defaults() -> None:
    # Each option's row starts with the option and its default, e.g. | `heartbeat` | `10.0` |
    text = (DOCS / "configuration.md").read_text()
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(kiwitrio.open_communicator).parameters.items()
        if isinstance(parameter.default, (bool, int, float, str))
    }
    defaults.update({field.name: field.default
                     for field in dataclasses.fields(kiwitrio.ReconnectPolicy)})
    wrong = []
    for name, default in defaults.items():
        row = re.search(rf"^\| `{name}` \| (.*?) \|", text, re.MULTILINE)
        shown = repr(default) if isinstance(default, (str, float, type(None))) else str(default)
        if name == "max_message_size":
            shown = "64 * 1024 * 1024" if default == 64 * 1024 * 1024 else shown
        if row is None or f"`{shown}`".replace("'", '"') not in row.group(1).replace("'", '"'):
            wrong.append(f"{name} (default {default!r})")
    assert wrong == [], "options whose default the page does not show"


def test_every_page_is_in_the_navigation() -> None:
    mkdocs = (ROOT / "mkdocs.yml").read_text()
    pages = [page.relative_to(DOCS).as_posix() for page in run_all.pages()]
    assert [page for page in pages if page not in mkdocs] == []


@pytest.mark.parametrize("fragment", run_all.fragments(), ids=lambda fragment: fragment.where)
def test_fragment_runs(fragment: object) -> None:
    # Every other python block of the pages and of the README, run on the in-memory broker.
    problem = run_all.run_fragment(fragment, timeout=EXAMPLE_TIMEOUT)
    assert problem is None, problem


def test_fragments_were_found() -> None:
    # The README's and the pages' unmarked blocks: if this drops, the block parser broke.
    fragments = run_all.fragments()
    assert len(fragments) >= 15
    assert {fragment.kind for fragment in fragments} == {"async", "script", "pytest"}


def _cli_lines() -> list[str]:
    """The command lines that docs/cli.md and the README show, from ``kiwitrio`` on."""
    lines = []
    for page in (DOCS / "cli.md", ROOT / "README.md"):
        for block in re.findall(r"```(?:console|text|bash)\n(.*?)```", page.read_text(), re.DOTALL):
            for line in block.splitlines():
                found = re.search(r"(?:^|\$ |\| )(kiwitrio \w+.*)", line)
                if found and not line.startswith("kiwitrio: "):
                    lines.append(found.group(1).split("#")[0].split(";")[0])
    return lines


def test_cli_lines_in_the_docs_use_real_commands_and_options() -> None:
    from kiwitrio._cli import build_parser

    parser = build_parser()
    commands = next(action for action in parser._actions
                    if isinstance(action, argparse._SubParsersAction)).choices
    lines = _cli_lines()
    assert len(lines) >= 10, lines
    wrong = []
    for line in lines:
        words = line.split()
        command = commands.get(words[1])
        if command is None:
            if not words[1][0].isdigit():  # "kiwitrio 0.1.0": the version line of the output
                wrong.append(f"{line}: no command {words[1]!r}")
            continue
        for option in re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", line):
            if option not in command._option_string_actions:
                wrong.append(f"{line}: {words[1]} has no option {option}")
    assert wrong == []
