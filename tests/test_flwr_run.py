"""`flwr run` on this project, started and stopped with Flower's own tooling, offline.

(a) a local simulation: ``flwr run .`` starts its own background SuperLink (stopped here);
(b) the Deployment Engine on loopback: one ``flower-superlink`` and three ``flower-supernode``
    processes on 127.0.0.1, each SuperNode given its partition with ``--node-config``.

Both run the comparison of one tiny experiment (3 clients, train, forget client 0 with retrain and
PUF, probe, summary.csv) and must reproduce the ``fedunlearn run`` simulation of the same
experiment file bit for bit: every number of summary.csv but the wall times, and every array
saved (checkpoints, stored updates). The SuperNodes run their ClientApps with one intra-op
thread, as the simulation's client actors do (``simulation.num_cpus = 1``: Ray sets
``OMP_NUM_THREADS=1``); with torch's default two threads the weights differ by ~1e-6 (measured,
see the README's "Beyond one machine").
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from fedunlearn.cli import main
from fedunlearn.config import config_to_dict, load_config, to_toml
from tests.flwr_cli import FlowerEnv

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = 3
STRATEGIES = ["retrain", "puf"]
# Few federated rounds (each is a process per message under the Deployment Engine): 1 training
# round, retrain's 1 round, PUF's unlearning round without recovery; the probe runs "alone" for
# 2 SGD steps (one federated round each: the ClientApp's Context.state carries the momentum).
TINY = [f"data.num_clients={CLIENTS}", "data.partition=iid", "model.name=mlp", "model.mlp.hidden=32",
        "train.rounds=1", "train.local_epochs=1", "train.batch_size=16", "store.history=true",
        "data.backdoor.clients=[]", "forget=[{clients=[0]}]", f"forgetting.strategies={STRATEGIES}",
        "forgetting.recovery=fixed", "forgetting.recovery_rounds=0", "forgetting.min_original_test_acc=0",
        "forgetting.check_separation=false", "probe.metric=auto", "probe.modes=['alone']",
        "probe.alone_max_steps=2", "simulation.num_cpus=1"]
TIMING_COLUMNS = {"wall_s"}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    """The tiny experiment as a TOML file (``flwr run`` passes only ``experiment`` and ``out``)."""
    path = tmp_path_factory.mktemp("flwr-experiment") / "tiny.toml"
    path.write_text(to_toml(config_to_dict(load_config(ROOT / "experiments/default.toml", TINY))))
    return path


@pytest.fixture(scope="module")
def simulated(experiment, tmp_path_factory) -> Path:
    """The reference: ``fedunlearn run`` (Flower's simulation through run_simulation) of the same file."""
    out = tmp_path_factory.mktemp("cli-simulation") / "out"
    assert main(["run", str(experiment), "--out", str(out)]) == 0
    return out


@pytest.fixture
def flower(tmp_path):
    """An isolated Flower environment; every process it started is stopped, and checked gone."""
    env = FlowerEnv(tmp_path / "flower")
    try:
        yield env
    finally:
        left = env.stop()
        assert not left, "processes left running:\n" + "\n".join(left)


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def assert_same_results(got: Path, want: Path) -> None:
    """The comparison in ``got`` equals ``want``'s: summary numbers (not wall times) and every saved array."""
    got_rows, want_rows = rows(got / "summary.csv"), rows(want / "summary.csv")
    assert [r["strategy"] for r in got_rows] == [r["strategy"] for r in want_rows]
    for g, w in zip(got_rows, want_rows, strict=True):
        differ = {k: (g[k], w[k]) for k in w if k not in TIMING_COLUMNS and g.get(k) != w[k]}
        assert not differ, f"{w['strategy']}: {differ}"
    files = sorted(p.relative_to(want).as_posix() for p in want.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(got).as_posix() for p in got.rglob("*") if p.is_file())
    arrays = [f for f in files if f.endswith(".npz")]
    assert any("checkpoint" in f for f in arrays)
    for name in arrays:
        with np.load(got / name) as g, np.load(want / name) as w:
            assert sorted(g.files) == sorted(w.files), name
            for key in w.files:
                assert np.array_equal(g[key], w[key]), (
                    f"{name}[{key}] differs by up to {np.max(np.abs(g[key] - w[key])):.3g}")


def run_config(experiment: Path, out: Path) -> dict[str, str]:
    return {"experiment": str(experiment), "out": str(out)}


def test_flwr_run_local_simulation_writes_the_comparison(flower, experiment, simulated, tmp_path):
    out = tmp_path / "out"
    run = flower.flwr_run(ROOT, run_config=run_config(experiment, out),
                          federation_config={"num-supernodes": CLIENTS, "client-resources-num-cpus": 1},
                          timeout=300)
    assert run.ok, f"{run.status} {run.details}\n{run.log[-4000:]}"
    print(f"flwr run (local simulation): {run.wall_s:.1f} s")
    # flwr run left its local SuperLink running in the background, on this environment's port.
    assert flower.local_superlink_pids()
    summary = rows(out / "summary.csv")
    assert [r["strategy"] for r in summary] == ["original", *STRATEGIES]
    assert all(r["test_acc"] for r in summary)
    assert json.loads((out / "summary.json").read_text())[0]["strategy"] == "original"
    assert_same_results(out, simulated)


def test_deployment_engine_on_loopback_equals_the_simulation(flower, experiment, simulated, tmp_path):
    link = flower.start_superlink()
    flower.add_connection("loopback", link.address)
    nodes = flower.start_supernodes(link, [{"partition-id": i, "num-partitions": CLIENTS} for i in range(CLIENTS)],
                                    connection="loopback", OMP_NUM_THREADS="1")
    assert len(nodes) == CLIENTS
    out = tmp_path / "out"
    run = flower.flwr_run(ROOT, "loopback", run_config=run_config(experiment, out), timeout=400)
    assert run.ok, f"{run.status} {run.details}\n{run.log[-4000:]}"
    print(f"flwr run (Deployment Engine, {CLIENTS} SuperNodes): {run.wall_s:.1f} s")
    assert [r["strategy"] for r in rows(out / "summary.csv")] == ["original", *STRATEGIES]
    assert_same_results(out, simulated)
