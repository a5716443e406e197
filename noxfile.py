"""nox sessions: ``nox -s tests`` (Python 3.10-3.13), ``lint``, ``typecheck``, ``demo``.

The tests and the demo need a broker on 127.0.0.1:5672; these sessions run
``scripts/ensure-broker.sh`` first, which starts (or installs) RabbitMQ if nothing answers.
Python versions missing from PATH are taken from pyenv when it is installed.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

import nox

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True


def _pyenv_root() -> str | None:
    root = os.environ.get("PYENV_ROOT")
    if not root and shutil.which("pyenv"):
        try:
            root = subprocess.run(["pyenv", "root"], capture_output=True, text=True,
                                  check=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            root = None
    if not root:
        root = os.path.expanduser("~/.pyenv")
    return root if os.path.isdir(os.path.join(root, "versions")) else None


def _version_key(bin_dir: str) -> list[tuple[int, int | str]]:
    name = os.path.basename(os.path.dirname(bin_dir))  # e.g. "3.12.1"
    return [(0, int(part)) if part.isdigit() else (1, part) for part in name.split(".")]


def _add_pyenv_pythons_to_path() -> None:
    """Put every pyenv version's bin directory on PATH, so nox finds python3.10 ... 3.13.

    pyenv's shims for versions that are not selected fail instead of running, so the real
    directories go first; the newest patch release of each version wins.
    """
    root = _pyenv_root()
    if root is None:
        return
    dirs = sorted(glob.glob(os.path.join(root, "versions", "*", "bin")),
                  key=_version_key, reverse=True)
    path = os.environ.get("PATH", "").split(os.pathsep)
    os.environ["PATH"] = os.pathsep.join([d for d in dirs if d not in path] + path)


_add_pyenv_pythons_to_path()


def _ensure_broker(session: nox.Session) -> None:
    session.run("bash", "scripts/ensure-broker.sh", external=True)


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The test suite (arguments after -- go to pytest)."""
    _ensure_broker(session)
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *(session.posargs or ["-q"]))


@nox.session(python="3.12")
def lint(session: nox.Session) -> None:
    """ruff check on the whole repository."""
    session.install("ruff")
    session.run("ruff", "check", *(session.posargs or ["."]))


@nox.session(python="3.12")
def typecheck(session: nox.Session) -> None:
    """mypy with the pyproject configuration (strict, on kiwitrio and kiwitrio_sync)."""
    session.install("-e", ".[test]", "mypy")
    session.run("mypy", *session.posargs)


@nox.session(python="3.12")
def demo(session: nox.Session) -> None:
    """The end-to-end demo (examples/demo.py)."""
    _ensure_broker(session)
    session.install("-e", ".[test]")
    session.run("python", "examples/demo.py", *session.posargs)


@nox.session(python="3.12")
def docs(session: nox.Session) -> None:
    """The documentation site: mkdocs build --strict into site/ (-- serve: preview it)."""
    session.install(".[docs]")
    session.run("mkdocs", *(session.posargs or ["build", "--strict"]),
                env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session(python="3.11")
def lower_bounds(session: nox.Session) -> None:
    """The tests against the oldest dependency versions pyproject.toml allows."""
    _ensure_broker(session)
    session.install("-c", "constraints/lower-bounds.txt", "-e", ".[test]")
    session.run("python", "-m", "pytest", *(session.posargs or ["-q", "--ignore=tests/faults"]))


@nox.session(python="3.12")
def package(session: nox.Session) -> None:
    """Build the wheel, install it alone in a clean environment, import it, run the CLI."""
    tmp = session.create_tmp()
    session.install("build")
    session.run("python", "-m", "build", "--wheel", "--outdir", tmp)
    wheels = glob.glob(os.path.join(tmp, "kiwitrio-*.whl"))
    session.install(*wheels)
    with session.chdir(tmp):  # away from the source tree, so the installed copy is used
        session.run("python", "-c", "import kiwitrio, kiwitrio_sync; print(kiwitrio.__file__)")
        session.run("kiwitrio", "--version")


@nox.session(python="3.12")
def bench(session: nox.Session) -> None:
    """The benchmark suite against aio-pika and kiwiPy (-- --quick: about a minute).

    Arguments after -- go to benchmarks/run.py. kiwiPy 0.9 needs aio-pika 9.5, so it gets a
    second environment, .nox/bench-kiwipy-<python>.
    """
    _ensure_broker(session)
    session.install(".", "matplotlib")
    kiwipy_env = os.path.join(".nox", f"bench-kiwipy-{session.python}")
    kiwipy_python = os.path.join(kiwipy_env, "bin", "python")
    if not os.path.exists(kiwipy_python):
        session.run("python", "-m", "venv", kiwipy_env)
    session.run(kiwipy_python, "-m", "pip", "install", "--quiet", "kiwipy[rmq]==0.9.*",
                external=True)
    session.run("python", "benchmarks/run.py", "--kiwipy-python", kiwipy_python,
                *session.posargs)
