"""A private RabbitMQ node for destructive tests: started, SIGKILLed and restarted at will.

The node has its own name (``kt-faults-<random>@localhost``), its own AMQP and distribution
ports (loopback ports outside the ephemeral range, see :mod:`.ports`), its own data, log,
plugins, config and feature-flags files under one temporary directory owned by the
``rabbitmq`` user (the server drops to that user when started as root), and listens on
127.0.0.1 only. It is found again, and killed, by its node name in the processes'
environment, never by a process name: the shared node (``rabbit@...`` on port 5672) and
other people's private nodes are never touched.
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .ports import release_port, reserve_port

RABBITMQ_BIN = Path(os.environ.get("KIWITRIO_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))
SERVER = RABBITMQ_BIN / "rabbitmq-server"
CTL = RABBITMQ_BIN / "rabbitmqctl"
SERVICE_USER = "rabbitmq"

#: A fresh node boots in about 4 s here, a restart after SIGKILL in about 5 s; leave room
#: for a loaded 2-core CI machine.
START_TIMEOUT = 60.0
KILL_TIMEOUT = 15.0
#: rabbitmqctl boots an Erlang VM of its own: about 2 s on an idle machine, 4-10 s on a
#: loaded one, and over 30 s was seen just after a restart there.
CTL_TIMEOUT = 120.0
#: The AMQP 0-9-1 protocol header; a ready broker answers with a Connection.Start frame.
_AMQP_HEADER = b"AMQP\x00\x00\x09\x01"
_METHOD_FRAME = 1


def available() -> str | None:
    """None if a private node can be started here, else why not."""
    if not SERVER.exists() or not CTL.exists():
        return f"no RabbitMQ server scripts in {RABBITMQ_BIN} (set KIWITRIO_RABBITMQ_BIN)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVICE_USER)
        except KeyError:
            return f"running as root but there is no {SERVICE_USER!r} user to run the node as"
    return None


def amqp_ready(port: int, timeout: float = 1.0) -> bool:
    """True if something on ``port`` speaks AMQP (answers the protocol header)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(_AMQP_HEADER)
            frame = sock.recv(7)
    except OSError:
        return False
    return len(frame) == 7 and frame[0] == _METHOD_FRAME


@dataclass(frozen=True)
class NodeRecord:
    """A node's name, ports and directory: enough to find (and kill) it again."""

    node: str
    port: int
    dist_port: int
    base: str


class PrivateBroker:
    """One private RabbitMQ node; see the module docstring.

    :meth:`start` (again after :meth:`kill`: same data directory, so durable queues and
    persistent messages survive), :meth:`kill` (SIGKILL), :meth:`destroy` (kill and remove
    every file), :meth:`pause` / :meth:`resume` (SIGSTOP / SIGCONT). All methods block; call
    them from Trio with ``trio.to_thread.run_sync``. ``existing`` attaches to a node that an
    earlier process started (and detached, see :meth:`detach`) instead of making a new one.
    """

    def __init__(self, *, consumer_timeout_ms: int = 60_000,
                 channel_tick_ms: int | None = None, name_prefix: str = "kt-faults",
                 parent_dir: Path | None = None, extra_config: str = "",
                 existing: NodeRecord | None = None) -> None:
        # The broker checks consumer timeouts on its channel tick (every 60 s by default):
        # a short tick makes a short consumer_timeout fire on time.
        self.consumer_timeout_ms = consumer_timeout_ms
        self.channel_tick_ms = channel_tick_ms
        #: rabbitmq.conf lines of the caller's own (a cluster's partition handling).
        self.extra_config = extra_config
        if existing is None:
            existing = NodeRecord(
                node=f"{name_prefix}-{uuid.uuid4().hex[:10]}@localhost",
                port=reserve_port(), dist_port=reserve_port(),
                base=tempfile.mkdtemp(prefix=f"{name_prefix}-", dir=parent_dir))
            prepare = True
        else:
            prepare = False
        self.base = Path(existing.base)
        self.node = existing.node
        self.port = existing.port
        self.dist_port = existing.dist_port
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        self.starts = 0
        self.kills = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._as_root = os.geteuid() == 0
        self._home = (pwd.getpwnam(SERVICE_USER).pw_dir if self._as_root
                      else os.environ.get("HOME", str(self.base)))
        if prepare:
            self._prepare()
            # Also if pytest is interrupted before the fixture's finalizer runs. A node
            # attached to (``existing``) belongs to whoever started it.
            atexit.register(self.destroy)

    def record(self) -> NodeRecord:
        """What finds this node again from another process (scripts/cluster.sh)."""
        return NodeRecord(node=self.node, port=self.port, dist_port=self.dist_port,
                          base=str(self.base))

    def detach(self) -> None:
        """Leave the node running when this process exits (its record finds it again)."""
        atexit.unregister(self.destroy)
        self._process = None

    # -- files ----------------------------------------------------------------------------

    def _prepare(self) -> None:
        for sub in ("mnesia", "log"):
            (self.base / sub).mkdir()
        (self.base / "enabled_plugins").write_text("[].\n")
        (self.base / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            # A short delivery-acknowledgement timeout: a task stuck unacknowledged for a
            # minute has its channel closed (and is requeued) instead of hanging a test.
            f"consumer_timeout = {self.consumer_timeout_ms}\n"
            "log.console = false\n"
            "log.file.level = info\n"
            f"{self.extra_config}"
        )
        if self.channel_tick_ms is not None:
            (self.base / "advanced.config").write_text(
                f"[{{rabbit, [{{channel_tick_interval, {self.channel_tick_ms}}}]}}].\n")
        # Our own env file, so that /etc/rabbitmq/rabbitmq-env.conf (the shared node's
        # NODENAME and friends) is not read for this node.
        (self.base / "rabbitmq-env.conf").write_text("ERL_EPMD_ADDRESS=127.0.0.1\n")
        if self._as_root:
            user = pwd.getpwnam(SERVICE_USER)
            for path in [self.base, *self.base.rglob("*")]:
                os.chown(path, user.pw_uid, user.pw_gid)

    def environment(self) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": self._home,  # where the Erlang cookie is (shared with rabbitmqctl)
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq"),  # without ".conf"
            "RABBITMQ_FEATURE_FLAGS_FILE": str(self.base / "mnesia" / "feature_flags"),
            "RABBITMQ_CONF_ENV_FILE": str(self.base / "rabbitmq-env.conf"),
            "RABBITMQ_PID_FILE": str(self.base / "mnesia" / "node.pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            # Erlang distribution on loopback only.
            "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }
        if self.channel_tick_ms is not None:
            env["RABBITMQ_ADVANCED_CONFIG_FILE"] = str(self.base / "advanced.config")
        return env

    def _run_as(self) -> dict[str, Any]:
        if not self._as_root:
            return {}
        return {"user": SERVICE_USER, "group": SERVICE_USER, "extra_groups": []}

    # -- lifecycle --------------------------------------------------------------------------

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> float:
        """Start the node (same data as before) and wait until it accepts AMQP connections.

        Returns how long that took. Raises RuntimeError with the node's log on failure.
        """
        if self.is_running():
            raise RuntimeError(f"{self.node} is already running")
        began = time.monotonic()
        self.starts += 1
        output = self.base / f"server-{self.starts}.out"
        with open(output, "wb") as out:
            self._process = subprocess.Popen(
                [str(SERVER)], env=self.environment(), stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, cwd=self.base,
                start_new_session=True, **self._run_as(),
            )
        deadline = began + timeout
        while not amqp_ready(self.port):
            if self._process.poll() is not None:
                raise RuntimeError(f"{self.node} exited with {self._process.returncode} "
                                   f"while starting:\n{self.describe()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"{self.node} did not accept AMQP connections within "
                                   f"{timeout:.0f} s:\n{self.describe()}")
            time.sleep(0.1)
        return time.monotonic() - began

    def kill(self) -> None:
        """SIGKILL the node (the Erlang VM and its helpers), as a crash would."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                self.kills += 1
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                process.wait(timeout=KILL_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=KILL_TIMEOUT)
        # Anything else of this node (helpers that left the process group) goes too.
        deadline = time.monotonic() + KILL_TIMEOUT
        while pids := self.own_pids():
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"processes of {self.node} survive SIGKILL: {pids}")
            time.sleep(0.05)

    def destroy(self) -> None:
        """Kill the node and remove all its files (idempotent)."""
        atexit.unregister(self.destroy)
        try:
            self.kill()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)
            release_port(self.port)
            release_port(self.dist_port)

    def own_pids(self) -> list[int]:
        """Live processes whose environment names this node (zombies have none).

        epmd is left out: a node that finds none running starts it, with the node's
        environment, but every node on the machine (the shared one too) then uses it.
        """
        marker = f"RABBITMQ_NODENAME={self.node}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                environ = (entry / "environ").read_bytes()
                command = (entry / "comm").read_text().strip()
            except OSError:
                continue
            if marker in environ.split(b"\0") and command != "epmd":
                pids.append(int(entry.name))
        return pids

    def pause(self) -> None:
        """SIGSTOP every process of the node: it keeps its sockets and answers nothing."""
        self._signal_all(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT what :meth:`pause` stopped."""
        self._signal_all(signal.SIGCONT)

    def _signal_all(self, signum: signal.Signals) -> None:
        pids = self.own_pids()
        if not pids:
            raise RuntimeError(f"{self.node} has no processes to send {signum.name} to")
        for pid in pids:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    # -- administration -----------------------------------------------------------------------

    def ctl(self, *args: str, timeout: float = CTL_TIMEOUT) -> str:
        """Run ``rabbitmqctl -n <this node> ARGS`` and return its output."""
        result = subprocess.run(
            [str(CTL), "-n", self.node, *args], env=self.environment(),
            stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, cwd=self.base,
            **self._run_as(),
        )
        stdout: bytes = result.stdout
        stderr: bytes = result.stderr
        if result.returncode != 0:
            raise RuntimeError(f"rabbitmqctl -n {self.node} {' '.join(args)} failed "
                               f"({result.returncode}): {stderr.decode()[-2000:]}")
        return stdout.decode()

    def queue_depths(self) -> dict[str, int]:
        """Messages (ready + unacknowledged) per queue, from ``rabbitmqctl list_queues``."""
        output = self.ctl("list_queues", "-q", "--no-table-headers", "name", "messages")
        depths = {}
        for line in output.splitlines():
            name, _, count = line.rpartition("\t")
            if name and count.isdigit():
                depths[name] = int(count)
        return depths

    def describe(self) -> str:
        """The tail of the node's output and log, for failure messages."""
        parts = []
        for path in sorted(self.base.glob("server-*.out")) + sorted(
                (self.base / "log").glob("*.log")):
            try:
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}")
            except OSError:
                pass
        return "\n".join(parts)
