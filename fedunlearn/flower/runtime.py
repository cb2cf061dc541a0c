"""The one place that starts Flower's Simulation Engine (Ray backend).

:func:`run_federation` starts a simulation of ``num_clients`` SuperNodes running
:mod:`fedunlearn.flower.client_app` and calls ``job(federation)`` inside the ServerApp, where
``federation`` (a :class:`Federation`) sends rounds to clients by partition id. Several phases and
even several experiments can run in one job, so Ray starts once. The entry point today is
``flwr.simulation.run_simulation`` (deprecated in favour of ``flwr run``, which reaches the same
job through :mod:`fedunlearn.flower.server_app`); only this module would change.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy
from threadpoolctl import threadpool_limits

from fedunlearn.config import SimulationConfig
from fedunlearn.flower import compat
from fedunlearn.settings import ConfigError

T = TypeVar("T")

# Ray and Flower settings that keep a local simulation quiet and quick to start.
QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "RAY_BACKEND_LOG_LEVEL": "fatal",  # Ray's C++ core would print its own lines beside fedunlearn's message
}

JOIN_TIMEOUT_S = 30.0  # how long joining a Ray cluster may take before its address is refused (~10 s seen busy)


class FederationError(RuntimeError):
    """The simulation could not be set up or a round could not complete."""


class ClientFailureError(FederationError):
    """A client failed in too many rounds in a row (``simulation.max_failed_rounds``)."""


def error_summary(reason: str) -> str:
    """The line of an error reply's reason (often a whole traceback) that says what went wrong."""
    lines = [line.strip() for line in reason.strip().splitlines() if line.strip()]
    text = lines[-1] if lines else "no reason given"
    return text if len(text) <= 200 else text[:197] + "..."


def train_reply_problem(reply: Message) -> str:
    """Why a train reply without an error breaks Flower's convention ("" when it keeps it): at least one
    ArrayRecord and exactly one MetricRecord holding ``num-examples``."""
    metrics = list(reply.content.metric_records.values())
    if not reply.content.array_records or len(metrics) != 1 or "num-examples" not in metrics[0]:
        return "reply without an ArrayRecord and one MetricRecord with num-examples"
    return ""


class FailureWatch:
    """Counts failing clients round by round, across every phase run on one federation.

    Each failure's whole reason (the client's traceback) is appended to ``failure_log``; the console gets
    one line per round with failures. A client that fails in ``max_failed_rounds`` rounds in a
    row (rounds it was asked to train in) stops the run with :class:`ClientFailureError`.
    """

    def __init__(self, partition_of: dict[int, int], max_failed_rounds: int, failure_log: Path | None,
                 log: Callable[[str], None] = print) -> None:
        self.partition_of, self.max_failed_rounds = partition_of, max_failed_rounds
        self.failure_log, self.log = failure_log, log
        self.streak: dict[int, int] = {}

    def check(self, stage: str, server_round: int, messages: list[Message], replies: list[Message],
              timeout: float) -> None:
        sampled = sorted(self.partition_of.get(m.metadata.dst_node_id, -1) for m in messages)
        failed: dict[int, str] = {}
        for reply in replies:  # a malformed train reply is dropped by the strategy: it fails too
            pid = self.partition_of.get(reply.metadata.src_node_id, -1)
            if reply.has_error():
                failed[pid] = reply.error.reason
            elif reply.metadata.message_type.split(".")[0] == MessageType.TRAIN and (why := train_reply_problem(reply)):
                failed[pid] = why
        answered = {self.partition_of.get(r.metadata.src_node_id, -1) for r in replies}
        failed.update({pid: f"no reply within {timeout:g} s" for pid in sampled if pid not in answered})
        for pid in sampled:
            self.streak[pid] = self.streak.get(pid, 0) + 1 if pid in failed else 0
        if not failed:
            return
        where = f"{stage} round {server_round}"
        if self.failure_log is not None:  # appended: earlier sessions' tracebacks (before a resume) stay
            self.failure_log.parent.mkdir(parents=True, exist_ok=True)
            with open(self.failure_log, "a") as fh:
                fh.writelines(f"=== {where}, client {pid}\n{reason.rstrip()}\n\n" for pid, reason in sorted(failed.items()))
        first = min(failed)
        self.log(f"  {where}: {len(failed)} of {len(sampled)} clients failed (client {first}: "
                 f"{error_summary(failed[first])}){self._see()}")
        pid, streak = max(self.streak.items(), key=lambda kv: (kv[1], -kv[0]))
        if streak >= self.max_failed_rounds:
            raise ClientFailureError(
                f"simulation.max_failed_rounds: client {pid} failed in {streak} rounds in a row, the last in {where} "
                f"({error_summary(failed.get(pid, ''))}){self._see()}; fix what makes it fail, or raise "
                "simulation.max_failed_rounds to tolerate it longer")

    def _see(self) -> str:
        return f"; tracebacks in {self.failure_log}" if self.failure_log is not None else ""


class WatchedGrid:
    """A grid whose rounds go through a :class:`FailureWatch` (everything else is the grid's own).

    Phases that drive a strategy with Flower's ``Strategy.start`` (the relearning probe) get this
    in place of the grid, so failing clients are reported the way :meth:`Federation.train_round`
    reports them. The round is read from the messages' ``server-round`` config.
    """

    def __init__(self, grid: Grid, failures: FailureWatch, stage: str, timeout: float) -> None:
        self._grid, self._failures, self._stage, self._timeout = grid, failures, stage, timeout

    def __getattr__(self, name: str):
        return getattr(self._grid, name)

    def send_and_receive(self, messages, *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        config = messages[0].content.config_records.get("config", {}) if messages else {}
        return self.exchange(messages, int(config.get("server-round", 0)), timeout)

    def exchange(self, messages: list[Message], server_round: int, timeout: float | None = None) -> list[Message]:
        """Send ``messages``, wait for the replies, and report failing clients as round ``server_round``."""
        if not messages:
            return []
        timeout = timeout or self._timeout
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        self._failures.check(self._stage, server_round, messages, replies, timeout)
        return replies


class Federation:
    """A running simulation seen from the ServerApp: its grid and which node holds which partition.

    Parameters
    ----------
    grid
        The ServerApp's grid.
    num_clients
        How many SuperNodes (partitions) the simulation has.
    timeout
        Seconds to wait for a round's replies.
    max_failed_rounds, failure_log, log
        How failing clients are reported and when they stop the run (:class:`FailureWatch`).
    """

    def __init__(self, grid: Grid, num_clients: int, timeout: float = 3600.0, max_failed_rounds: int = 3,
                 failure_log: Path | None = None, log: Callable[[str], None] = print) -> None:
        self.grid = grid
        self.num_clients = num_clients
        self.timeout = timeout
        self.node_of = self._discover(simulated=compat.fast_grid_pulls(grid))
        self.failures = FailureWatch({n: p for p, n in self.node_of.items()}, max_failed_rounds, failure_log, log)

    def _discover(self, simulated: bool) -> dict[int, int]:
        """Partition id -> node id (node ids are random 64-bit numbers each run).

        The Simulation Engine's own map when it registered exactly these nodes in this process
        (:func:`compat.simulated_partitions`; on a simulation's grid it is awaited up to 2 s after
        the last node is up); otherwise every node is asked for its ``partition-id``.
        """
        deadline = time.monotonic() + 60
        while len(nodes := set(self.grid.get_node_ids())) < self.num_clients:
            if time.monotonic() > deadline:
                raise FederationError(f"only {len(nodes)} of {self.num_clients} SuperNodes registered within 60 s")
            time.sleep(0.05)
        # the engine keeps its map just after the last node is up (when its registration is wrapped)
        registered = time.monotonic() + (2.0 if simulated and compat.recording_partitions() else 0.0)
        while (known := compat.simulated_partitions(nodes)) is None and time.monotonic() < registered:
            time.sleep(0.01)
        if known is not None and len(known) == self.num_clients:
            return known
        messages = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in sorted(nodes)]
        replies = list(self.grid.send_and_receive(messages, timeout=self.timeout))
        errors = [r.error.reason for r in replies if r.has_error()]
        if errors or len(replies) != self.num_clients:
            raise FederationError(f"partition discovery failed ({len(replies)} replies): {errors}")
        return {int(r.content["info"]["partition-id"]): r.metadata.src_node_id for r in replies}

    def watched(self, stage: str) -> WatchedGrid:
        """The grid as ``Strategy.start`` uses it, with failing clients reported under ``stage``."""
        return WatchedGrid(self.grid, self.failures, stage, self.timeout)

    def train_round(self, strategy: Strategy, arrays: ArrayRecord, server_round: int,
                    config: ConfigRecord | None = None, stage: str = "") -> tuple[ArrayRecord, MetricRecord]:
        """One round: ``strategy`` picks clients and what they do, they train, it aggregates.

        ``stage`` names the phase in failure reports (``"training"``, ``"puf"``, ``"probe"``).
        """
        messages = list(strategy.configure_train(server_round, arrays, config or ConfigRecord(), self.grid))
        replies = self.watched(stage or "round").exchange(messages, server_round)
        new, metrics = strategy.aggregate_train(server_round, replies)
        if new is None or metrics is None:
            raise FederationError(f"round {server_round}: no client update to aggregate")
        return new, metrics


def quiet_environment() -> None:
    """Set the environment variables of :data:`QUIET_ENV` (unless the user set them)."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    # flwr logs every round at INFO and a deprecation notice at WARNING; failures that matter are
    # counted and reported by the strategy itself.
    logging.getLogger("flwr").setLevel(logging.ERROR)
    logging.getLogger("ray").setLevel(logging.WARNING)


def _share_python_path() -> None:
    """Let the client actors import what the driver can: the working directory joins PYTHONPATH.

    Parts named by an import path (``model.name = "mylab.nets:resnet18"``) are imported inside
    every actor, whose processes inherit the environment Ray starts them with.
    """
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if os.getcwd() not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([os.getcwd(), *paths])


def machine_cpus() -> int:
    """CPUs this process may use (what the private local Ray cluster is given)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def machine_resources() -> dict[str, float]:
    """CPUs this process may use and GPUs torch can see on this machine."""
    import torch

    return {"CPU": float(machine_cpus()), "GPU": float(torch.cuda.device_count())}


def _ray_endpoint(address: str) -> tuple[str, int] | None:
    """(host, port) of a Ray address ``host:port`` or ``ray://host:port``; None for ``auto``."""
    if address == "auto":
        return None
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"simulation.ray_address: {address!r} is not host:port (e.g. 127.0.0.1:6379) or 'auto'")
    return host, int(port)


def cluster_resources(address: str, timeout: float = 5.0) -> dict[str, float]:
    """The CPUs and GPUs of the largest node of the Ray cluster at ``address`` (one actor runs on one
    node, so that is what a client can be given); ConfigError within seconds when none answers."""
    endpoint = _ray_endpoint(address)
    if endpoint is not None:
        try:
            socket.create_connection(endpoint, timeout=timeout).close()
        except OSError as err:
            raise ConfigError(f"simulation.ray_address: nothing answers at {address} ({err.strerror or err}); "
                              "start the cluster there (`ray start --head`) or leave ray_address empty for a "
                              "local one") from None
    quiet_environment()
    import ray

    joined: dict[str, object] = {}

    def join() -> None:
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
            nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
            joined["resources"] = {k: max((float(n.get(k, 0.0)) for n in nodes), default=0.0) for k in ("CPU", "GPU")}
            ray.shutdown()
        except Exception as err:  # noqa: BLE001 - any failure to join is reported as the address's problem
            joined["error"] = err

    worker = threading.Thread(target=join, daemon=True)  # a wrong service on the port can make ray.init hang
    worker.start()
    worker.join(JOIN_TIMEOUT_S)
    if "resources" not in joined:
        why = joined.get("error", f"no answer within {JOIN_TIMEOUT_S:g} s")
        raise ConfigError(f"simulation.ray_address: cannot join a Ray cluster at {address} ({why}); start one "
                          "there (`ray start --head`) or leave ray_address empty for a local one")
    return joined["resources"]  # type: ignore[return-value]


def check_resources(sim: SimulationConfig, available: dict[str, float] | None = None) -> None:
    """Refuse client resources the machine (or the largest node of ``simulation.ray_address``'s cluster) cannot give.

    Ray would otherwise wait forever for an actor it cannot place. ``available`` defaults to
    :func:`machine_resources`, or the cluster's when an address is set.
    """
    if available is None:
        available = cluster_resources(sim.ray_address) if sim.ray_address else machine_resources()
    where = f"the largest node of the Ray cluster at {sim.ray_address}" if sim.ray_address else "this machine"
    cpus, gpus = available.get("CPU", 0.0), available.get("GPU", 0.0)
    if sim.num_cpus > cpus:
        raise ConfigError(f"simulation.num_cpus: each client asks for {sim.num_cpus:g} CPU(s) but {where} has "
                          f"{cpus:g}; set simulation.num_cpus to at most {cpus:g}")
    if sim.num_gpus > gpus:
        fix = f"at most {gpus:g}" if gpus else "0 (CPU only)"
        raise ConfigError(f"simulation.num_gpus: each client asks for {sim.num_gpus:g} GPU(s) but {where} has "
                          f"{gpus:g}; set simulation.num_gpus to {fix}")


def backend_config(sim: SimulationConfig) -> dict:
    """Ray backend settings: client resources, and a private local cluster unless an address is given."""
    init_args: dict = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR,
                       "configure_logging": True}
    init_args["address"] = sim.ray_address or "local"  # "local" avoids joining a stale cluster
    if not sim.ray_address:
        init_args["num_cpus"] = machine_cpus()
    return {"client_resources": {"num_cpus": sim.num_cpus, "num_gpus": sim.num_gpus}, "init_args": init_args}


def fork_safe(job: Callable[[Federation], T], fed: Federation) -> T:
    """``job(fed)`` with numpy's BLAS on one thread, as the ServerApp runs it.

    Ray starts its processes by forking the main thread while the ServerApp's thread may already be
    scoring (a resumed comparison starts with the summary metrics: the MIA's and the generative task's
    logistic regressions). OpenBLAS's pre-fork handler waits for its worker threads, which a BLAS call
    of the ServerApp, waiting for the GIL the forking thread holds, keeps busy: a deadlock. On one
    thread a BLAS call runs in its caller and the workers stay idle. The clients train in their own
    processes, and torch's threads are not OpenBLAS's, so training is not slowed.
    """
    with threadpool_limits(limits=1, user_api="blas"):
        return job(fed)


def run_federation(num_clients: int, sim: SimulationConfig, job: Callable[[Federation], T],
                   failure_log: Path | None = None, resources_checked: bool = False) -> T:
    """Start a simulation of ``num_clients`` clients, run ``job`` in its ServerApp, return its result.

    The resources are checked first (:func:`check_resources`, unless the caller already did). An
    exception raised by ``job`` is re-raised here after the simulation has shut down. Failing
    clients' tracebacks go to ``failure_log``.
    """
    if not resources_checked:
        check_resources(sim)
    quiet_environment()
    compat.fast_node_polling()
    _share_python_path()
    from flwr.simulation import run_simulation

    from fedunlearn.flower.client_app import app as client_app

    outcome: dict[str, T] = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        outcome["result"] = fork_safe(job, Federation(grid, num_clients, timeout=sim.round_timeout_s,
                                                      max_failed_rounds=sim.max_failed_rounds,
                                                      failure_log=failure_log))

    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=num_clients,
                   backend_name="ray", backend_config=backend_config(sim))
    if "result" not in outcome:
        raise FederationError("the simulation ended before the ServerApp finished (see the log above)")
    return outcome["result"]
