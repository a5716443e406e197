"""nox sessions: ``nox -s tests`` (Python 3.10-3.13), ``lint``, ``typecheck``, ``demo``,
``cluster`` (the cluster fault scenarios, long variant, on RabbitMQ 3.10 and 4.3 clusters).

The tests and the demo need a broker on 127.0.0.1:5672; these sessions run
``scripts/ensure-broker.sh`` first, which starts (or installs) RabbitMQ if nothing answers.
Python versions missing from PATH are taken from pyenv when it is installed.

Newer platforms, from a Debian sid chroot (``scripts/sid.sh``; needs root, builds the chroot at
``/var/cache/kiwitrio/sid`` on first use, about 2 minutes, then reuses it):

- ``nox -s tests-3.14``, ``nox -s tests-3.15``: the suite on Python 3.14 / 3.15. Where
  ``python3.14`` / ``python3.15`` is on PATH these are ordinary sessions (and part of
  ``nox -s tests``); otherwise they run inside the chroot, in a venv made there at
  ``.nox/sid-tests-3.14`` (pip runs only when pyproject.toml or the chroot changed). The
  shared broker is the host's, as for the other sessions; the fault tests' private nodes are
  the chroot's RabbitMQ 4.3.
- ``nox -s tests_rmq43-3.12`` (or any of 3.10-3.15): the suite against a
  private RabbitMQ 4.3 node from the chroot (``bash scripts/sid.sh rabbitmq start``: port
  5680, left running for the next run; ``bash scripts/sid.sh rabbitmq stop`` stops it).
  Without nox: ``KIWITRIO_TEST_URL=$(bash scripts/sid.sh rabbitmq start) .venv/bin/python -m
  pytest -q`` (add ``KIWITRIO_TEST_RABBITMQCTL="bash $PWD/scripts/sid.sh rabbitmq ctl"`` for
  the test that checks the broker's queues with rabbitmqctl; without it, that check is skipped).

Arguments after ``--`` go to pytest in every tests session.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess

import nox

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
#: Run in the Debian sid chroot unless the host has them.
SID_PYTHONS = ["3.14", "3.15"]
SID = ["bash", "scripts/sid.sh"]

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
HOST_PYTHONS = PYTHONS + [v for v in SID_PYTHONS if shutil.which(f"python{v}")]


def _ensure_broker(session: nox.Session) -> None:
    session.run("bash", "scripts/ensure-broker.sh", external=True)


#: The Python whose ``tests`` session also runs the suites on ``sqlite://`` (about 1.5 minutes
#: more); the other sessions skip the sqlite parameter (KIWITRIO_TEST_SQLITE=0), since the
#: backend has no dependency that differs between them. Set KIWITRIO_TEST_SQLITE yourself to
#: decide for every session.
SQLITE_PYTHON = "3.12"


def _sqlite_env(enabled: bool) -> dict[str, str]:
    return {"KIWITRIO_TEST_SQLITE": os.environ.get("KIWITRIO_TEST_SQLITE",
                                                   "1" if enabled else "0")}


@nox.session(python=HOST_PYTHONS)
def tests(session: nox.Session) -> None:
    """The test suite (arguments after -- go to pytest); on 3.12 also on sqlite://."""
    _ensure_broker(session)
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *(session.posargs or ["-q"]),
                env=_sqlite_env(session.python == SQLITE_PYTHON))


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _sid_chroot_stamp() -> str:
    """The chroot's own stamp file (what it was provisioned with, and when), read from the host."""
    root = os.environ.get("KIWITRIO_SID_DIR", "/var/cache/kiwitrio/sid")
    return os.path.join(root, "etc", "kiwitrio-sid.stamp")


def _sid_venv(session: nox.Session, version: str) -> str:
    """A venv inside the chroot at .nox/sid-tests-VERSION with kiwitrio[test]; its python.

    The repository is mounted at its own path in the chroot, so the venv's paths are the same
    inside and out. A stamp in the venv records pyproject.toml's hash and the chroot's stamp:
    pip runs when pyproject.toml changed, and the venv is made anew when the chroot was
    rebuilt or upgraded.
    """
    session.run(*SID, "ensure", external=True)
    venv = os.path.join(os.path.realpath(".nox"), f"sid-tests-{version}")
    python = os.path.join(venv, "bin", "python")
    stamp = os.path.join(venv, ".kiwitrio-sid-stamp")
    chroot_key = _sha256(_sid_chroot_stamp())
    want = f"{_sha256('pyproject.toml')} {chroot_key}"
    have = _read(stamp)
    if not os.path.lexists(python) or have is None or not have.endswith(f" {chroot_key}"):
        session.log(f"creating {venv} with python{version} in the chroot")
        session.run(*SID, "run", f"python{version}", "-m", "venv", "--clear", venv,
                    external=True)
        have = None
    if have == want:
        session.log("kiwitrio[test] is installed and pyproject.toml is unchanged; skipping pip")
    else:
        if os.path.exists(stamp):
            os.remove(stamp)
        session.run(*SID, "run", python, "-m", "pip", "install", "--quiet", "-e", ".[test]",
                    external=True)
        with open(stamp, "w") as f:
            f.write(want + "\n")
    return python


def _rmq43_env(session: nox.Session) -> dict[str, str]:
    """Start the RabbitMQ 4.3 node if it does not answer; the suite's environment for it."""
    session.run(*SID, "rabbitmq", "start", external=True)
    url = session.run(*SID, "rabbitmq", "url", external=True, silent=True)
    assert isinstance(url, str)
    # rabbitmqctl for that node, for the tests that look at the broker's queues with it.
    ctl = f"bash {os.path.realpath('scripts/sid.sh')} rabbitmq ctl"
    return {"KIWITRIO_TEST_URL": url.strip(), "KIWITRIO_TEST_RABBITMQCTL": ctl}


def _sid_tests_session(version: str, *, rmq43: bool) -> None:
    def sid_tests(session: nox.Session) -> None:
        python = _sid_venv(session, version)
        _ensure_broker(session)
        # scripts/sid.sh hands KIWITRIO_* variables on to the chroot.
        env = {**(_rmq43_env(session) if rmq43 else {}), **_sqlite_env(False)}
        session.run(*SID, "run", python, "-m", "pytest", *(session.posargs or ["-q"]),
                    external=True, env=env)

    against = "a private RabbitMQ 4.3 node (port 5680)" if rmq43 else "the shared broker"
    sid_tests.__doc__ = (f"The test suite on Python {version} inside the Debian sid chroot, "
                         f"against {against} (scripts/sid.sh; -- goes to pytest).")
    name = f"tests_rmq43-{version}" if rmq43 else f"tests-{version}"
    nox.session(name=name, venv_backend="none")(sid_tests)


for _version in SID_PYTHONS:
    if _version not in HOST_PYTHONS:
        _sid_tests_session(_version, rmq43=False)
        _sid_tests_session(_version, rmq43=True)


@nox.session(python=HOST_PYTHONS)
def tests_rmq43(session: nox.Session) -> None:
    """The test suite against RabbitMQ 4.3, a private node from the sid chroot (port 5680).

    The node is started if it does not answer (scripts/sid.sh rabbitmq start) and left
    running for the next run; stop it with: bash scripts/sid.sh rabbitmq stop.
    """
    env = {**_rmq43_env(session), **_sqlite_env(False)}
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *(session.posargs or ["-q"]), env=env)


@nox.session(python=PYTHONS)
def tests_trio_asyncio(session: nox.Session) -> None:
    """The test suite with the same-thread trio-asyncio bridge (KIWITRIO_BRIDGE=trio-asyncio).

    kiwitrio_sync keeps its thread bridge; everything that says bridge="auto" uses
    trio-asyncio. CI runs it with ``-- -q --ignore=tests/faults`` (see CI_SESSIONS).
    """
    _ensure_broker(session)
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *(session.posargs or ["-q"]),
                env={"KIWITRIO_BRIDGE": "trio-asyncio", **_sqlite_env(False)})


CLUSTER_TESTS = "tests/faults/test_cluster.py"


@nox.session(python="3.12")
def cluster(session: nox.Session) -> None:
    """The cluster scenarios, long variant, on a private 3-node RabbitMQ 3.10 cluster (the
    host's) and then on a 3-node RabbitMQ 4.3 cluster (Python 3.14 in the sid chroot, whose
    RabbitMQ the private nodes are there); -- goes to pytest. Needs root. CI runs only the
    short variant, on 3.10 (scripts/test.sh); this takes about 10 minutes.
    """
    args = session.posargs or ["-q", "-s", "-p", "no:cacheprovider"]
    env = {"KIWITRIO_CLUSTER_TESTS": "long"}
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", CLUSTER_TESTS, *args, env=env)
    python = _sid_venv(session, "3.14")
    session.run(*SID, "run", python, "-m", "pytest", CLUSTER_TESTS, *args,
                external=True, env=env)


#: What CI runs (scripts/test.sh without arguments), a diagonal of the matrix that fits in
#: 30 minutes: Python 3.12 against the shared broker (RabbitMQ 3.10 here) with the fault suite
#: and the suites on sqlite:// (SQLITE_PYTHON), Python 3.14 against a RabbitMQ 4.3 node, and
#: 3.12 on the trio-asyncio bridge (these two without the fault suite, side by side). The
#: cluster scenarios' short variant joins tests-3.12 (KIWITRIO_CLUSTER_CI=short, the default).
CI_SESSIONS = ["tests-3.12", "tests_rmq43-3.14", "tests_trio_asyncio-3.12"]


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
    session.run("python", "-m", "pytest", *(session.posargs or ["-q", "--ignore=tests/faults"]),
                env=_sqlite_env(False))


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
    # The trio-asyncio extra: "kiwitrio/trio-asyncio" runs kiwitrio on that bridge.
    session.install(".[trio-asyncio]", "matplotlib")
    kiwipy_env = os.path.join(".nox", f"bench-kiwipy-{session.python}")
    kiwipy_python = os.path.join(kiwipy_env, "bin", "python")
    if not os.path.exists(kiwipy_python):
        session.run("python", "-m", "venv", kiwipy_env)
    session.run(kiwipy_python, "-m", "pip", "install", "--quiet", "kiwipy[rmq]==0.9.*",
                external=True)
    session.run("python", "benchmarks/run.py", "--kiwipy-python", kiwipy_python,
                *session.posargs)


def _sid_bench_session(version: str) -> None:
    def sid_bench(session: nox.Session) -> None:
        python = _sid_venv(session, version)
        _ensure_broker(session)
        results = os.path.join("benchmarks", "results", f"python{version}")
        session.run(*SID, "run", python, "benchmarks/run.py", "--impl", "aio-pika",
                    "--impl", "kiwitrio", "--impl", "kiwitrio_sync", "--no-plot",
                    "--results", results, *session.posargs, external=True)

    sid_bench.__doc__ = (f"The benchmarks on Python {version} in the sid chroot: aio-pika, "
                         f"kiwitrio and kiwitrio_sync on the thread bridge (results in "
                         f"benchmarks/results/python{version}/; -- goes to benchmarks/run.py).")
    nox.session(name=f"bench-{version}", venv_backend="none")(sid_bench)


for _version in SID_PYTHONS:
    if _version not in HOST_PYTHONS:
        _sid_bench_session(_version)
