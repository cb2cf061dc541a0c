"""Flower's own tooling driven from tests: `flwr run`, `flower-superlink` and `flower-supernode`.

A :class:`FlowerEnv` is one isolated Flower world in a temporary directory:

* its own ``FLWR_HOME`` (the CLI's ``config.toml`` with the SuperLink connections), and one per
  SuperLink and SuperNode it starts (as on separate machines: each installs the app's FAB in its
  own home, so concurrent installs of one FAB never race);
* the offline switches (no runtime dependency installation, no telemetry, no update check) and
  free ports on 127.0.0.1 only, including the port of the local SuperLink that ``flwr run``
  starts by itself for a local simulation (``FLWR_LOCAL_SUPERLINK_HTTP_API_PORT``), so a test
  never meets a SuperLink left by someone else;
* a marker variable in the environment of every process it starts. Flower detaches some of its
  processes into their own sessions (the local SuperLink started by ``flwr run``, the SuperLink's
  SuperExec), so process groups are not enough: :meth:`FlowerEnv.stop` ends the processes it
  started by their process group, then every process that still carries the marker (they
  inherit it: SuperExec, ServerApp and ClientApp processes, Ray), by pid, and
  :meth:`FlowerEnv.leftovers` lists what would remain (the fixtures assert it is empty).

Usage, as a context manager (or through a pytest fixture that yields one)::

    with FlowerEnv(tmp_path / "flwr") as env:
        link = env.start_superlink()
        env.start_supernodes(link, [{"partition-id": i, "num-partitions": 3} for i in range(3)])
        env.add_connection("loopback", link.address)
        run = env.flwr_run(APP_DIR, "loopback", run_config={"out": str(tmp_path / "out")})
        assert run.ok, run.log

    with FlowerEnv(tmp_path / "flwr") as env:       # a local simulation (connection "local")
        run = env.flwr_run(APP_DIR, federation_config={"num-supernodes": 3})

Nothing here is specific to fedunlearn: the app directory is a parameter.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MARKER = "FEDUNLEARN_FLWR_TEST_TAG"  # set in every process a FlowerEnv starts
BIN = Path(sys.executable).parent  # the venv running the tests holds flwr's commands
HOST = "127.0.0.1"

# Flower offline and quiet; FLWR_SUPEREXEC_TASK_POLL_INTERVAL shortens SuperExec's wait for a new
# ClientApp/ServerApp task (1 s by default; each message of a run is one task).
OFFLINE_ENV = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ADDRESS": "local",  # a simulation's ray.init() starts a private cluster, never joins one
}


def command(name: str) -> str:
    """The path of one of Flower's commands (``flwr``, ``flower-superlink``...) in this venv."""
    found = shutil.which(name, path=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]))
    if found is None:
        raise FileNotFoundError(f"{name} not found beside {sys.executable} nor on PATH; install flwr")
    return found


def free_ports(n: int = 1) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 now (all held open until each is known)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def toml_value(value: Any) -> str:
    """A Python bool, int, float or str as a TOML value (run configs hold only these)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))  # JSON string escapes are valid TOML basic-string escapes
    raise TypeError(f"run config values are bool, int, float or str, not {type(value).__name__}")


@dataclass
class Proc:
    """A process started by a :class:`FlowerEnv` (in its own session), with its log file."""

    name: str
    popen: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class SuperLink:
    proc: Proc
    port: int
    home: Path

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"


@dataclass
class FlwrRun:
    """The outcome of one ``flwr run``: the run id, its final status on the SuperLink, the CLI's log."""

    run_id: int | None
    returncode: int
    status: str  # e.g. "finished:completed", "finished:failed"; "" when unknown
    details: str
    log: str
    wall_s: float
    info: dict[str, Any] = field(default_factory=dict)  # the run's row from `flwr ls --format json`

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.status == "finished:completed"


class FlowerEnv:
    """One isolated Flower environment under ``root``; see the module docstring.

    Parameters
    ----------
    root
        A fresh directory (created) for Flower homes, logs and configs.
    extra_env
        More environment for every process (e.g. ``PYTHONPATH`` for an app whose ServerApp
        imports a package that is not in its FAB, ``OMP_NUM_THREADS``).
    """

    def __init__(self, root: Path, extra_env: Mapping[str, str] | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.tag = uuid.uuid4().hex
        self.home = self.root / "cli-home"  # FLWR_HOME of the flwr CLI: config.toml
        self.home.mkdir(exist_ok=True)
        self.local_port, self.local_control_port = free_ports(2)
        self.extra_env = dict(extra_env or {})
        self.procs: list[Proc] = []
        self.connections: dict[str, dict[str, Any]] = {"local": {"address": ":local:"}}
        self._write_config()

    # -- environment and configuration ---------------------------------------------------------
    def env(self, home: Path | None = None, **extra: str) -> dict[str, str]:
        """The environment of a process started here (``home`` becomes its FLWR_HOME)."""
        env = dict(os.environ)
        env.update(OFFLINE_ENV)
        env.update(self.extra_env)
        env.update(extra)
        env.update({
            MARKER: self.tag,
            "FLWR_HOME": str(home or self.home),
            "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(self.local_port),
            "FLWR_LOCAL_CONTROL_API_PORT": str(self.local_control_port),
            "PATH": os.pathsep.join([str(BIN), env.get("PATH", "")]),
        })
        return env

    def add_connection(self, name: str, address: str, insecure: bool = True,
                       root_certificates: str | Path | None = None) -> None:
        """Add a SuperLink connection ``[superlink.<name>]`` to the CLI's config.toml."""
        conn: dict[str, Any] = {"address": address, "insecure": insecure}
        if root_certificates is not None:
            conn = {"address": address, "root-certificates": str(root_certificates)}
        self.connections[name] = conn
        self._write_config()

    def _write_config(self) -> None:
        lines = ["[superlink]", 'default = "local"', ""]
        for name, conn in self.connections.items():
            lines.append(f"[superlink.{name}]")
            lines += [f"{key} = {toml_value(value)}" for key, value in conn.items()]
            lines.append("")
        (self.home / "config.toml").write_text("\n".join(lines))

    def config_toml(self) -> str:
        return (self.home / "config.toml").read_text()

    # -- processes ------------------------------------------------------------------------------
    def spawn(self, name: str, args: list[str], home: Path | None = None, cwd: Path | None = None,
              **extra: str) -> Proc:
        """Start ``args`` in its own session with this environment; output goes to ``<name>.log``."""
        log_path = self.root / f"{name}.log"
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(args, env=self.env(home, **extra), stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=cwd or self.root, start_new_session=True)
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def start_superlink(self, port: int | None = None, timeout: float = 60.0, args: Iterable[str] = (),
                        **extra: str) -> SuperLink:
        """Start ``flower-superlink --insecure`` on 127.0.0.1 and wait until ``/health`` answers."""
        port = port or free_ports(1)[0]
        home = self.root / f"superlink-{port}-home"
        proc = self.spawn(f"superlink-{port}", [command("flower-superlink"), "--insecure", "--host", HOST,
                                        "--port", str(port), *args], home=home, **extra)
        deadline = time.monotonic() + timeout
        while not _healthy(port):
            if proc.popen.poll() is not None:
                raise RuntimeError(f"flower-superlink exited with {proc.popen.returncode}:\n{proc.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"flower-superlink not healthy on port {port} within {timeout:g} s:\n"
                                   f"{proc.log()[-3000:]}")
            time.sleep(0.2)
        return SuperLink(proc, port, home)

    def start_supernode(self, superlink: SuperLink | str, node_config: Mapping[str, Any], name: str,
                        args: Iterable[str] = (), **extra: str) -> Proc:
        """Start ``flower-supernode --insecure`` with ``--node-config`` (its Runtime API on a free port)."""
        address = superlink.address if isinstance(superlink, SuperLink) else superlink
        config = " ".join(f"{key}={toml_value(value)}" for key, value in node_config.items())
        port = free_ports(1)[0]
        return self.spawn(name, [command("flower-supernode"), "--insecure", "--superlink", address,
                                 "--node-config", config, "--host", HOST, "--port", str(port), *args],
                          home=self.root / f"{name}-home", **extra)

    def start_supernodes(self, superlink: SuperLink, node_configs: list[Mapping[str, Any]],
                         connection: str | None = None, timeout: float = 60.0, **extra: str) -> list[Proc]:
        """Start one SuperNode per node config and wait until the SuperLink lists them all online."""
        if connection is None:
            connection = f"superlink-{superlink.port}"
            self.add_connection(connection, superlink.address)
        first = sum(1 for p in self.procs if p.name.startswith("supernode-"))
        nodes = [self.start_supernode(superlink, cfg, f"supernode-{first + i}", **extra)
                 for i, cfg in enumerate(node_configs)]
        deadline = time.monotonic() + timeout
        while (online := self.online_nodes(connection)) < len(nodes):
            dead = [n for n in nodes if n.popen.poll() is not None]
            if dead:
                raise RuntimeError(f"{dead[0].name} exited with {dead[0].popen.returncode}:\n{dead[0].log()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{online} of {len(nodes)} SuperNodes online within {timeout:g} s:\n"
                                   + "\n".join(f"--- {n.name}\n{n.log()[-1500:]}" for n in nodes))
            time.sleep(0.5)
        return nodes

    def flwr(self, *args: str, timeout: float = 60.0, cwd: Path | None = None) -> subprocess.CompletedProcess:
        """Run ``flwr ARGS`` (the CLI, with this environment) and return its completed process."""
        return subprocess.run([command("flwr"), *args], env=self.env(), cwd=cwd or self.root, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def flwr_json(self, *args: str, timeout: float = 60.0) -> dict[str, Any]:
        """``flwr ARGS --format json``, parsed (``{}`` when the output holds no JSON object)."""
        out = self.flwr(*args, "--format", "json", timeout=timeout).stdout
        start = out.find("{")
        try:
            return json.loads(out[start:]) if start >= 0 else {}
        except json.JSONDecodeError:
            return {}

    def online_nodes(self, connection: str) -> int:
        nodes = self.flwr_json("supernode", "list", connection).get("nodes", [])
        return sum(1 for n in nodes if n.get("status") == "online")

    def flwr_run(self, app_dir: Path, connection: str | None = None, run_config: Mapping[str, Any] | None = None,
                 federation_config: Mapping[str, Any] | None = None, timeout: float = 600.0,
                 args: Iterable[str] = ()) -> FlwrRun:
        """``flwr run APP_DIR [CONNECTION] --stream`` and wait for the run to end.

        ``connection`` None is the ``local`` connection: a local simulation on a SuperLink that
        ``flwr run`` starts in the background (stopped by :meth:`stop`). ``run_config`` goes
        through a TOML file (``--run-config FILE.toml``, any path or string survives quoting);
        ``federation_config`` as ``--federation-config "k=v ..."`` (e.g. ``num-supernodes``).
        ``--stream`` prints the run's logs and returns when the run has ended; the run's status
        is then read with ``flwr ls --run-id``. On timeout the run is stopped (``flwr stop``) and
        the result has returncode 124.
        """
        connection = connection or "local"
        cmd = [command("flwr"), "run", str(Path(app_dir).resolve()), connection, "--stream", *args]
        if run_config:
            path = self.root / f"run-config-{len(self.procs)}.toml"
            path.write_text("".join(f"{key} = {toml_value(value)}\n" for key, value in run_config.items()))
            cmd += ["--run-config", str(path)]
        if federation_config:
            cmd += ["--federation-config", " ".join(f"{k}={toml_value(v)}" for k, v in federation_config.items())]
        start = time.monotonic()
        proc = self.spawn(f"flwr-run-{len(self.procs)}", cmd, cwd=Path(app_dir))
        try:
            returncode = proc.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            returncode = 124
        wall = time.monotonic() - start
        log = proc.log()
        match = re.search(r"Successfully started run (\d+)", log)
        run_id = int(match.group(1)) if match else None
        if returncode == 124:
            if run_id is not None:
                self.flwr("stop", str(run_id), connection, timeout=30)
            _signal_group(proc.pid, signal.SIGTERM)
        info: dict[str, Any] = {}
        if run_id is not None:
            runs = self.flwr_json("ls", connection, "--run-id", str(run_id)).get("runs", [])
            info = runs[0] if runs else {}
        return FlwrRun(run_id, returncode, str(info.get("status", "")), str(info.get("status-details", "")),
                       log, wall, info)

    # -- stopping ------------------------------------------------------------------------------
    def tagged_pids(self) -> list[int]:
        """Live processes whose environment carries this environment's marker (Linux /proc)."""
        needle = f"{MARKER}={self.tag}".encode()
        pids = []
        for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:  # gone, a zombie, or not ours
                continue
        return pids

    def leftovers(self) -> list[str]:
        """``pid command line`` of every process this environment started that is still alive."""
        alive = {p.pid for p in self.procs if p.popen.poll() is None} | set(self.tagged_pids())
        return [f"{pid} {_cmdline(pid)}" for pid in sorted(alive)]

    def local_superlink_pids(self) -> list[int]:
        """The local SuperLink(s) that ``flwr run`` started in the background for this environment."""
        port = f"--port {self.local_port}"
        return [pid for pid in self.tagged_pids() if "flower-superlink" in (cmd := _cmdline(pid)) and port in cmd]

    def stop(self, grace: float = 10.0) -> list[str]:
        """Stop every process started here; return the leftovers (empty when all are gone).

        SIGTERM to each started process's group and to every process carrying the marker (the
        detached ones: ``flwr run``'s local SuperLink and its SuperExec; Flower's own shutdown
        stops their app processes), SIGKILL to whatever is left after ``grace``.
        """
        for proc in reversed(self.procs):  # flwr run, SuperNodes, then the SuperLink
            if proc.popen.poll() is None:
                _signal_group(proc.pid, signal.SIGTERM)
        for pid in self.tagged_pids():
            _signal(pid, signal.SIGTERM)
        self._wait(grace)
        for proc in self.procs:
            if proc.popen.poll() is None:
                _signal_group(proc.pid, signal.SIGKILL)
        for pid in self.tagged_pids():
            _signal(pid, signal.SIGKILL)
        self._wait(5.0)
        return self.leftovers()

    def _wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if all(p.popen.poll() is not None for p in self.procs) and not self.tagged_pids():
                return
            time.sleep(0.1)

    def __enter__(self) -> FlowerEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        left = self.stop()
        if left and exc[0] is None:
            raise AssertionError("processes left running:\n" + "\n".join(left))


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/health", timeout=0.5) as res:
            return res.status == 200
    except OSError:
        return False


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)  # started with start_new_session: its pgid is its pid
    except (ProcessLookupError, PermissionError):
        pass


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"
