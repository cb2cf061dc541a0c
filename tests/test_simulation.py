"""Real Flower simulations (Ray backend), all in one Ray session for this module.

One ServerApp job runs every scenario, recording what went over the grid, and the tests check it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from fedunlearn.config import load_config
from fedunlearn.data import federated_data
from fedunlearn.evaluation import Scorer
from fedunlearn.flower import compat
from fedunlearn.flower.runtime import run_federation
from fedunlearn.phases.train import train_phase
from fedunlearn.results import read_csv
from fedunlearn.store import PseudoGradientStore
from fedunlearn.strategies import RecordingFedAvg, TooFewClientsError

SMALL = ["data.num_clients=4", "data.partition=iid", "model.name=mlp", "model.mlp.hidden=32", "train.rounds=3", "train.local_epochs=2",
         "train.batch_size=16", "store.history=true"]


class GridRecorder:
    """Wraps a grid's send_and_receive: keeps (round, node) -> weights sent and replies received."""

    def __init__(self, grid) -> None:
        self.grid, self.inner = grid, grid.send_and_receive
        self.sent: dict[tuple[int, int], list[np.ndarray]] = {}
        self.returned: dict[tuple[int, int], list[np.ndarray]] = {}
        grid.send_and_receive = self

    def __call__(self, messages, timeout=None):
        messages = list(messages)
        for m in messages:
            if m.metadata.message_type == "train":
                rnd = int(m.content["config"]["server-round"])
                self.sent[(rnd, m.metadata.dst_node_id)] = m.content["arrays"].to_numpy_ndarrays()
        replies = list(self.inner(messages, timeout=timeout))
        for r in replies:
            if not r.has_error() and "arrays" in r.content:
                pid = int(r.content["metrics"]["partition-id"])
                rnd = max(k[0] for k in self.sent)
                self.returned[(rnd, pid)] = r.content["arrays"].to_numpy_ndarrays()
        return replies


class FailingFedAvg(RecordingFedAvg):
    """Sends partition 1 a recipe it cannot run, so its ClientApp raises."""

    def client_config(self, partition_id, config):
        if partition_id == 1:
            config["local-epochs"] = "not-a-number"
        return config


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sim")
    cfg = load_config(None, SMALL)
    other_seed = dataclasses.replace(cfg, seed=1)
    out = {"cfg": cfg, "tmp": tmp}

    def train(fed, c, path, resume=False):
        scorer = Scorer(c, federated_data(c.data, c.seed), [])
        return train_phase(fed, c, path, scorer, resume=resume, log=lambda *_: None)

    def job(fed):
        rec = GridRecorder(fed.grid)
        out["node_of"] = fed.node_of
        out["engine_map"] = compat.simulated_partitions(fed.grid.get_node_ids())
        asked = fed.grid.send_and_receive([Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY)
                                           for n in fed.grid.get_node_ids()])
        out["asked"] = {int(r.content["info"]["partition-id"]): r.metadata.src_node_id for r in asked}
        out["a"] = train(fed, cfg, tmp / "a")
        out["sent"], out["returned"] = dict(rec.sent), dict(rec.returned)
        out["b"] = train(fed, cfg, tmp / "b")
        out["c"] = train(fed, other_seed, tmp / "c")
        short = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, rounds=2))
        train(fed, short, tmp / "d")
        out["d"] = train(fed, cfg, tmp / "d", resume=True)
        arrays = ArrayRecord(out["a"].weights)
        lenient = FailingFedAvg.from_config(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, min_train_clients=3)),
                                           PseudoGradientStore(), fed.node_of, range(4))
        _, out["lenient_metrics"] = fed.train_round(lenient, arrays, 1, ConfigRecord())
        out["lenient_report"] = lenient.report
        strict = FailingFedAvg.from_config(cfg, PseudoGradientStore(), fed.node_of, range(4))
        try:
            fed.train_round(strict, arrays, 1)
        except TooFewClientsError as err:
            out["strict_error"] = str(err)
        return out

    return run_federation(4, cfg.simulation, job)


def test_discovery_maps_every_partition_to_a_node(sim):
    assert sorted(sim["node_of"]) == [0, 1, 2, 3]
    assert len(set(sim["node_of"].values())) == 4


def test_the_engines_map_is_what_the_nodes_say(sim):
    """The map came from the Simulation Engine (no node was asked), and every node agrees with it."""
    assert sim["engine_map"] == sim["node_of"] == sim["asked"]


def test_stored_delta_is_returned_minus_sent_element_for_element(sim):
    store = sim["a"].store
    for (rnd, pid), returned in sim["returned"].items():
        sent = sim["sent"][(rnd, sim["node_of"][pid])]
        stored = store.get(pid, rnd)
        for d, w, g in zip(stored.delta, returned, sent, strict=True):
            np.testing.assert_array_equal(d, w - g)
    assert len(sim["returned"]) == 3 * 4  # every client, every round
    assert any(np.abs(d).max() > 0 for d in store.get(0, 1).delta)  # clients really trained


def test_training_learns(sim):
    accs = [float(r["test_acc"]) for r in sim["a"].rows]
    assert accs[-1] > 0.5 and accs[-1] > accs[0]


def test_same_seed_same_accuracy_column_other_seed_differs(sim):
    cols = {k: [r["test_acc"] for r in read_csv(sim["tmp"] / k / "rounds.csv")] for k in "abc"}
    assert cols["a"] == cols["b"]
    assert cols["a"] != cols["c"]


def test_resumed_run_equals_uninterrupted_run(sim):
    for x, y in zip(sim["a"].weights, sim["d"].weights, strict=True):
        np.testing.assert_array_equal(x, y)
    ra, rd = read_csv(sim["tmp"] / "a" / "rounds.csv"), read_csv(sim["tmp"] / "d" / "rounds.csv")
    assert [r["test_acc"] for r in ra] == [r["test_acc"] for r in rd]


def test_run_folder_holds_config_checkpoint_and_store(sim):
    run = sim["tmp"] / "a"
    cfg = load_config(run / "config.toml")
    assert cfg == sim["cfg"]
    back = PseudoGradientStore.load(run / "store")
    assert back.history_rounds(2) == [1, 2, 3]


def test_client_failures_are_counted_or_stop_the_run(sim):
    assert sim["lenient_metrics"]["failures"] == 1 and sim["lenient_report"].succeeded == [0, 2, 3]
    assert "not-a-number" in sim["lenient_report"].failures[0]
    assert "3 of 4 sampled clients succeeded" in sim["strict_error"]
