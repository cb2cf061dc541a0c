"""A large federation costs what its sampled clients cost: partitions known without asking every
node, clients' data cut when first asked for, figures and metrics bounded, clients on a GPU when
given one (benchmarks/scale.py measures the times; these tests check the mechanisms)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, MessageType

from fedunlearn.config import load_config
from fedunlearn.data import ClientPartitions, federated_data
from fedunlearn.evaluation import Scorer, mia
from fedunlearn.flower import compat
from fedunlearn.flower.runtime import Federation
from fedunlearn.parts import for_seed
from fedunlearn.provenance import training_settings
from fedunlearn.report import federation as figure
from fedunlearn.store import PseudoGradientStore
from fedunlearn.strategies import RecordingFedAvg
from fedunlearn.strategies.fedavg import local_recipe
from tests.local_grid import LocalGrid


class CountingGrid(LocalGrid):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.queries = 0

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        self.queries += sum(m.metadata.message_type == MessageType.QUERY for m in messages)
        return super().send_and_receive(messages, timeout=timeout)


def test_a_known_partition_map_spares_asking_every_node(monkeypatch):
    grid = CountingGrid(6)
    engine_map = {node: int(ctx.node_config["partition-id"]) for node, ctx in grid.contexts.items()}
    monkeypatch.setattr(compat, "_node_partitions", engine_map)
    fed = Federation(grid, 6)
    assert grid.queries == 0
    assert fed.node_of == {p: n for n, p in engine_map.items()}


def test_without_the_map_every_node_is_asked_for_its_partition(monkeypatch):
    monkeypatch.setattr(compat, "_node_partitions", {})
    grid = CountingGrid(6, node_ids=[97, 13, 55, 2, 80, 41])
    fed = Federation(grid, 6)
    assert grid.queries == 6
    assert fed.node_of == {0: 97, 1: 13, 2: 55, 3: 2, 4: 80, 5: 41}


def backdoored(num_clients: int = 8):
    cfg = for_seed(load_config(None, [f"data.num_clients={num_clients}", "data.backdoor.clients=[2, 5]",
                                      "forget=[{clients=[5]}]"]))
    return cfg, federated_data(cfg.data, cfg.seed)


def test_clients_cut_on_demand_are_the_partition_and_the_poisoned_samples_are_seeded():
    cfg, data = backdoored()
    clients = data.clients
    assert isinstance(clients, ClientPartitions) and len(clients) == 8
    sizes = [c.num_examples for c in clients]
    assert sizes == [len(idx) for idx in clients._parts]
    assert sum(sizes) + len(data.y_test) == 1797  # every digit once
    assert [len(c.poisoned) > 0 for c in clients] == [i in (2, 5) for i in range(8)]
    again = ClientPartitions(clients._ds, clients._parts, cfg.data.backdoor, cfg.seed)  # a fresh actor's view
    for i in (2, 5, 7):
        np.testing.assert_array_equal(again[i].x_train, clients[i].x_train)
        np.testing.assert_array_equal(again[i].poisoned, clients[i].poisoned)
    assert clients[-1] is clients[7] and [c.num_examples for c in clients[1:3]] == sizes[1:3]
    with pytest.raises(IndexError):
        clients[8]
    assert data.backdoored == [2, 5]


def test_an_actor_keeps_a_bounded_number_of_clients(monkeypatch):
    _, data = backdoored()
    monkeypatch.setattr(ClientPartitions, "CACHED", 3)
    fresh = ClientPartitions(data.clients._ds, data.clients._parts, data.clients._backdoor, 0)
    for i in range(8):
        fresh[i]
    assert sorted(fresh._cache) == [5, 6, 7]


def test_a_large_federations_figure_draws_a_sample_and_says_so(tmp_path, monkeypatch):
    cfg, data = backdoored(num_clients=40)
    monkeypatch.setattr(figure, "MAX_BARS", 10)
    shown = figure.shown_clients(data, [5, 31])
    assert len(shown) == 10 and {2, 5, 31} <= set(shown) and shown == sorted(shown)
    assert set(shown) - {2, 5, 31} == {0, 1, 3, 4, 6, 7, 8}  # then the lowest ids
    path = figure.draw_label_distribution(data, [5, 31], tmp_path / "f.png", "title")
    assert path.stat().st_size > 0
    monkeypatch.setattr(figure, "MAX_BARS", 60)
    assert figure.shown_clients(data, [5]) == list(range(40))


def test_the_svc_attack_fits_on_a_bounded_sample(monkeypatch):
    fitted = []
    original_fit = mia.SVC.fit
    monkeypatch.setattr(mia.SVC, "fit", lambda self, x, y: (fitted.append(len(x)), original_fit(self, x, y))[1])
    rng = np.random.default_rng(0)
    members, non_members = rng.uniform(0.5, 1, 30000), rng.uniform(0, 0.6, 20000)
    forget = rng.uniform(0.5, 1, 50)
    efficacy = mia.svc_mia_efficacy(members, non_members, forget, np.random.default_rng(1))
    assert fitted == [2 * mia.SVC_MAX_SAMPLES]
    assert efficacy < 0.3  # forget samples look like members: the attack still works on the sample


def test_synthetic_test_set_size_can_stay_fixed_as_the_federation_grows():
    from fedunlearn.data import DATASETS

    part = DATASETS.get("synthetic")
    ds = part.obj(part.build_settings({"synthetic": {"samples": 5000, "test_samples": 300}}, "data."), 0)
    assert len(ds.y_train) == 5000 and len(ds.y_test) == 300
    ds = part.obj(part.build_settings({"synthetic": {"samples": 5000}}, "data."), 0)
    assert len(ds.y_train) == 4000 and len(ds.y_test) == 1000


def test_clients_train_on_a_gpu_only_when_given_a_share_of_one_and_the_record_says_so():
    cpu, gpu = load_config(None, []), load_config(None, ["simulation.num_gpus=0.25"])
    assert local_recipe(cpu)["device"] == "cpu" and local_recipe(gpu)["device"] == "cuda"
    assert "device" not in training_settings(cpu)  # CPU runs' records stay what they were
    assert training_settings(gpu) == {**training_settings(cpu), "device": "cuda"}
    assert training_settings(load_config(None, ["simulation.num_cpus=2"])) == training_settings(cpu)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a GPU-less client gives")
def test_a_client_asked_for_a_gpu_it_does_not_have_says_so():
    cfg = load_config(None, ["simulation.num_gpus=1", "data.num_clients=3"])
    fed = Federation(LocalGrid(3), 3)
    strategy = RecordingFedAvg.from_config(cfg, PseudoGradientStore(), fed.node_of, range(3))
    replies = fed.grid.send_and_receive(strategy.configure_train(1, ArrayRecord(Scorer(
        cfg, federated_data(cfg.data, cfg.seed)).initial_weights()), ConfigRecord(), fed.grid))
    reasons = [r.error.reason for r in replies]
    assert len(reasons) == 3 and all("simulation.num_gpus > 0 asks clients to train on a GPU" in r for r in reasons)
