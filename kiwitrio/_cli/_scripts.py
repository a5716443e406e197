"""``kiwitrio demo`` and ``kiwitrio bench``: scripts of the source checkout, with --url."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from ._common import PROG, Command, ExitCode
from ._output import eprint

__all__ = ["COMMANDS", "add_commands", "run"]

COMMANDS = ("demo", "bench")
#: Each command's script, and how to run it in a checkout without the command.
_SCRIPTS = {
    "demo": ("examples/demo.py", "bash scripts/demo.sh"),
    "bench": ("benchmarks/run.py", "nox -s bench"),
}


def add_commands(command: Command) -> None:
    command("demo", "run the end-to-end demo (examples/demo.py; extra options go to it)")
    command("bench", "run the benchmark suite (benchmarks/run.py; extra options go to it)")


def run(args: argparse.Namespace) -> int:
    relative, how = _SCRIPTS[args.command]
    return run_repository_script(args, relative, how)


def run_repository_script(args: argparse.Namespace, relative: str, how: str) -> int:
    """Run ``main()`` of a script of the source checkout this package lives in."""
    path = Path(__file__).resolve().parents[2] / relative  # kiwitrio/_cli/ -> the checkout
    spec = importlib.util.spec_from_file_location(f"kiwitrio_{path.stem}", path)
    if not path.is_file() or spec is None or spec.loader is None:
        eprint(f"kiwitrio: {relative} is not installed with the package; it is part of the "
               f"source repository. In a checkout, run: {how}")
        return ExitCode.USAGE
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    saved_argv = sys.argv
    sys.argv = [f"{PROG} {args.command}", "--url", args.url, *args.extra]
    try:
        spec.loader.exec_module(module)
        result = module.main()
    except SystemExit as exc:
        result = exc.code
    finally:
        sys.argv = saved_argv
    if result is None:
        return ExitCode.OK
    return result if isinstance(result, int) else ExitCode.FAILURE


