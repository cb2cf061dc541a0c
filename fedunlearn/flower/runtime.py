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
import time
from collections.abc import Callable
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

from fedunlearn.config import SimulationConfig
from fedunlearn.flower import compat

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
}

class FederationError(RuntimeError):
    """The simulation could not be set up or a round could not complete."""


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
    """

    def __init__(self, grid: Grid, num_clients: int, timeout: float = 3600.0) -> None:
        self.grid = grid
        self.num_clients = num_clients
        self.timeout = timeout
        compat.fast_grid_pulls(grid)
        self.node_of = self._discover()

    def _discover(self) -> dict[int, int]:
        """Ask every node for its partition id (node ids are random 64-bit numbers each run)."""
        deadline = time.monotonic() + 60
        while len(list(self.grid.get_node_ids())) < self.num_clients:
            if time.monotonic() > deadline:
                raise FederationError(f"only {len(list(self.grid.get_node_ids()))} of {self.num_clients} "
                                      "SuperNodes registered within 60 s")
            time.sleep(0.05)
        messages = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY)
                    for n in self.grid.get_node_ids()]
        replies = list(self.grid.send_and_receive(messages, timeout=self.timeout))
        errors = [r.error.reason for r in replies if r.has_error()]
        if errors or len(replies) != self.num_clients:
            raise FederationError(f"partition discovery failed ({len(replies)} replies): {errors}")
        return {int(r.content["info"]["partition-id"]): r.metadata.src_node_id for r in replies}

    def train_round(self, strategy: Strategy, arrays: ArrayRecord, server_round: int,
                    config: ConfigRecord | None = None) -> tuple[ArrayRecord, MetricRecord]:
        """One round: ``strategy`` picks clients and what they do, they train, it aggregates."""
        messages = strategy.configure_train(server_round, arrays, config or ConfigRecord(), self.grid)
        replies = self.grid.send_and_receive(messages, timeout=self.timeout)
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


def backend_config(sim: SimulationConfig) -> dict:
    """Ray backend settings: client resources, and a private local cluster unless an address is given."""
    init_args: dict = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR,
                       "configure_logging": True}
    init_args["address"] = sim.ray_address or "local"  # "local" avoids joining a stale cluster
    if not sim.ray_address:
        init_args["num_cpus"] = os.cpu_count() or 1
    return {"client_resources": {"num_cpus": sim.num_cpus, "num_gpus": sim.num_gpus}, "init_args": init_args}


def run_federation(num_clients: int, sim: SimulationConfig, job: Callable[[Federation], T]) -> T:
    """Start a simulation of ``num_clients`` clients, run ``job`` in its ServerApp, return its result.

    An exception raised by ``job`` is re-raised here after the simulation has shut down.
    """
    quiet_environment()
    compat.fast_node_polling()
    _share_python_path()
    from flwr.simulation import run_simulation

    from fedunlearn.flower.client_app import app as client_app

    outcome: dict[str, T] = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        outcome["result"] = job(Federation(grid, num_clients))

    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=num_clients,
                   backend_name="ray", backend_config=backend_config(sim))
    if "result" not in outcome:
        raise FederationError("the simulation ended before the ServerApp finished (see the log above)")
    return outcome["result"]
