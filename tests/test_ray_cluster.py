"""``simulation.ray_address``: a run joins a Ray cluster of two nodes and both nodes run clients.

The fixture starts a real two-node cluster on this machine with Ray's own CLI, as a user would on
their machines: ``ray start --head`` and ``ray start --address=HEAD:PORT`` (one CPU each), each
with a tag in its environment (``FEDUNLEARN_RAY_NODE=head|worker``; Ray's worker processes inherit
their raylet's environment). ``fedunlearn train`` then runs in its own process with
``simulation.ray_address=HEAD:PORT simulation.num_cpus=1``, so Flower makes two client actors, one
per node. The model is :func:`tests.parts.ray_probe.recording_mlp`: every process that builds it and
every training batch append a line naming the process, its node tag and its Ray node id. Both
nodes ran clients when both tags (and two node ids, each the id the node's own ``ray start``
wrote into its session folder) appear on training lines, and every sample of every round is
accounted for by the two actors together.

The nodes listen on 127.0.0.2 (loopback): ``ray start --node-ip-address=127.0.0.1`` is rewritten by
Ray to the machine's routable address, and the switch that keeps 127.0.0.1 also refuses a second
node. Ray's servers bind every interface whatever the node address (Ray has no option against
it). The fixture stops only what it started: each ``ray start --block`` leads its own process
group (raylet, GCS, agents and the workers they spawn join it), which is terminated, and no
process carrying the fixture's marker in its environment may be left.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fedunlearn.data import federated_data
from fedunlearn.parts import for_seed, load_experiment
from fedunlearn.results import read_csv
from tests.parts.ray_probe import NODE_TAG

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "experiments/default.toml"
RAY = Path(sys.executable).with_name("ray")
HOST = "127.0.0.2"  # loopback; Ray rewrites 127.0.0.1 to the machine's routable address
MARKER = "FEDUNLEARN_RAY_TEST_CLUSTER"  # in every process the fixture starts, to find leftovers
START_TIMEOUT_S = 60
CLI = "import sys; from fedunlearn.cli import main; sys.exit(main(sys.argv[1:]))"
PROBE = "tests.parts.ray_probe:recording_mlp"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    """A running two-node cluster: its address, folder, node ids by tag and ``ray start`` processes."""

    address: str
    folder: Path
    node_ids: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def logs(self) -> str:
        return "\n".join(f"--- ray start ({tag})\n{(self.folder / f'{tag}.log').read_text()[-3000:]}"
                         for tag in self.procs)


def node_env(tag: str, folder: Path) -> dict[str, str]:
    """A node's environment: quiet Ray, fedunlearn importable (as if installed there), its tag."""
    paths = [str(ROOT), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
            "PYTHONPATH": os.pathsep.join(paths), NODE_TAG: tag, MARKER: str(folder)}


def start_node(cluster: Cluster, tag: str, *flags: str) -> None:
    # --block keeps `ray start` in the foreground as the leader of a new process group holding
    # everything the node starts; a node's own temp dir keeps its session apart from other Ray users.
    argv = [str(RAY), "start", *flags, f"--node-ip-address={HOST}", "--num-cpus=1", "--num-gpus=0",
            "--object-store-memory=100000000", f"--temp-dir={cluster.folder / tag}", "--disable-usage-stats",
            "--block"]
    with open(cluster.folder / f"{tag}.log", "w") as log:
        cluster.procs[tag] = subprocess.Popen(argv, env=node_env(tag, cluster.folder), stdout=log,
                                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                              start_new_session=True)


def wait_started(cluster: Cluster, tag: str) -> None:
    """Until ``ray start`` says the node runs; its node id is then in its session folder's file names."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while "Ray runtime started" not in (cluster.folder / f"{tag}.log").read_text():
        if cluster.procs[tag].poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"the {tag} node did not start\n{cluster.logs()}")
        time.sleep(0.2)
    ports = list((cluster.folder / tag).glob("session_latest/runtime_env_agent_port_*"))
    assert len(ports) == 1, ports
    cluster.node_ids[tag] = ports[0].name.rpartition("_")[2]


def leftovers(marker: str) -> list[str]:
    """Live processes (not zombies) whose environment carries ``MARKER=marker``."""
    found, needle = [], f"{MARKER}={marker}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            state = (proc / "stat").read_text().rpartition(")")[2].split()[0]
            if state != "Z" and needle in (proc / "environ").read_bytes().split(b"\0"):
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append(f"{proc.name} {cmdline[:100]}")
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def stop(cluster: Cluster) -> None:
    """Terminate each node's process group (the worker first), then kill what is left of it."""
    procs = [cluster.procs[t] for t in ("worker", "head") if t in cluster.procs]
    for sig, grace in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
        for proc in procs:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and leftovers(str(cluster.folder)):
            time.sleep(0.2)
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        if not leftovers(str(cluster.folder)):
            return


@pytest.fixture(scope="module")
def two_node_cluster():
    """A head and a worker node (1 CPU each) on this machine, shared by this module's tests; stopped,
    and checked gone, afterwards."""
    # Short and outside pytest's tmp_path: Ray's Unix sockets live under it (108-byte path limit).
    folder = Path(tempfile.mkdtemp(prefix="fu-ray-", dir="/tmp"))
    port = free_port()
    cluster = Cluster(f"{HOST}:{port}", folder)
    try:
        start_node(cluster, "head", "--head", f"--port={port}", f"--ray-client-server-port={free_port()}",
                   "--include-dashboard=false")
        wait_started(cluster, "head")
        start_node(cluster, "worker", f"--address={cluster.address}")
        wait_started(cluster, "worker")
        assert leftovers(str(folder)), "the marker is not seen in the nodes' processes: the final check would prove nothing"
        yield cluster
    finally:
        stop(cluster)
        left = leftovers(str(folder))
        shutil.rmtree(folder, ignore_errors=True)
        assert not left, f"processes of the test's Ray cluster left running: {left}"


def test_a_run_joins_a_two_node_cluster_and_both_nodes_run_clients(two_node_cluster, tmp_path):
    cluster, records, out = two_node_cluster, tmp_path / "where.jsonl", tmp_path / "run"
    overrides = ["data.num_clients=4", "data.partition=iid", "data.backdoor.clients=[1]", "forget=[{clients=[1]}]",
                 f"model.name='{PROBE}'", f"model.'{PROBE}'.log='{records}'", "train.rounds=2",
                 "train.local_epochs=1", "train.batch_size=32", "store.history=false", "forgetting.strategies=['retrain']",
                 f"simulation.ray_address={cluster.address}", "simulation.num_cpus=1"]
    argv = [sys.executable, "-c", CLI, "train", str(DEFAULT), "--out", str(out),
            *[a for o in overrides for a in ("--set", o)]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    env.pop(NODE_TAG, None)
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{cluster.logs()}"

    # The run finished: every round in rounds.csv, the checkpoint written.
    assert [int(r["round"]) for r in read_csv(out / "rounds.csv")] == [1, 2]
    assert (out / "checkpoint" / "global.npz").exists()

    # Two client actors, one per node: each built the model once, on the node its tag names.
    lines = [json.loads(line) for line in records.read_text().splitlines()]
    actors = [r for r in lines if r["actor"] is not None]
    built = {r["tag"]: r for r in actors if r["event"] == "build"}
    assert sorted(built) == ["head", "worker"] and len(actors) == len([r for r in lines if r["tag"]]), lines
    assert len([r for r in actors if r["event"] == "build"]) == 2
    assert {tag: r["node"] for tag, r in built.items()} == cluster.node_ids
    # Both trained, and together they trained on every sample of every client in every round.
    trained = {tag: sum(r["n"] for r in actors if r["event"] == "train" and r["tag"] == tag) for tag in built}
    assert all(n > 0 for n in trained.values()), trained
    cfg = for_seed(load_experiment(DEFAULT, overrides))
    samples = sum(c.num_examples for c in federated_data(cfg.data, cfg.seed).clients)
    assert sum(trained.values()) == samples * cfg.train.rounds * cfg.train.local_epochs
    # Each training line came from the process that built the model on that node.
    assert {(r["tag"], r["pid"], r["node"]) for r in actors} == {(t, r["pid"], r["node"]) for t, r in built.items()}
    print(f"samples trained per node: {trained}; node ids {cluster.node_ids}")


def test_a_client_larger_than_every_node_is_refused_in_one_line(two_node_cluster, capsys):
    """Two CPUs in the cluster, but one per node: an actor asking for two fits nowhere (Ray would wait forever)."""
    from fedunlearn.cli import main

    code = main(["train", str(DEFAULT), "--set", "simulation.num_cpus=2", "--set",
                 f"simulation.ray_address={two_node_cluster.address}",
                 "--out", str(ROOT / "runs" / "never-written")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert f"the largest node of the Ray cluster at {two_node_cluster.address} has 1" in err[0]
    assert not (ROOT / "runs" / "never-written").exists()
