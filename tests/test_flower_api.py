"""fedunlearn's strategies in anyone's ServerApp: node ids, ``Strategy.start``, one implementation.

Mock replies for the node-id rules (the way Flower tests its strategies), and the in-process grid
for two things the issue asks to be shown: ``Strategy.start`` gives exactly what fedunlearn's own
runner gives (same classes, same numbers), and the example Flower app (its own ClientApp, no
fedunlearn on the client side) trains, forgets, probes and reports end to end.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import numpy as np
import pytest
import tomllib
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict

from fedunlearn.arrays import record_like
from fedunlearn.config import ForgetRequest
from fedunlearn.data import federated_data
from fedunlearn.models import build_model
from fedunlearn.parts import load_experiment
from fedunlearn.results import read_csv
from fedunlearn.serverapp import (
    IEUServerSide,
    PseudoGradientStore,
    PUFRound,
    RecordingFedAvg,
    relearning_probe,
)
from fedunlearn.strategies.base import UnlearningContext
from fedunlearn.strategies.fedavg import local_recipe
from fedunlearn.strategies.ieu import IEU, IEUSettings
from fedunlearn.strategies.puf import PUF, PUFSettings
from fedunlearn.training import get_weights
from tests.conftest import ROOT
from tests.local_grid import LocalGrid, local_federation
from tests.mocks import node_reply, send

EXAMPLE = ROOT / "examples" / "flower-app"
GLOBAL = [np.array([1.0, 2.0], dtype=np.float32), np.array([[0.5]], dtype=np.float32)]
NODES = [9_000_000_000_000_000_007, 42, 5_123_456_789]  # random 64-bit ids, as a SuperLink gives


class MockGrid:
    """``get_node_ids`` of a grid whose nodes are :data:`NODES`."""

    def get_node_ids(self):
        return list(NODES)


def reply_from(node: int, n: int, weights, reply_to: str = "", metrics: dict | None = None):
    return node_reply(node, n, dict(zip(("w", "b"), weights, strict=True)), reply_to, metrics)


def named_global() -> ArrayRecord:
    """The global model as a ServerApp built from a torch state dict sends it: named arrays."""
    return record_like(ArrayRecord({"w": Array(GLOBAL[0]), "b": Array(GLOBAL[1])}), GLOBAL)


# -- node ids: no partition id, no fedunlearn ClientApp --------------------------------------------
def test_clients_are_node_ids_when_no_partition_map_is_given():
    store = PseudoGradientStore()
    s = RecordingFedAvg(store, seed=3)
    sent = send(list(s.configure_train(1, named_global(), ConfigRecord({"lr": 0.1}), MockGrid())))
    assert sorted(m.metadata.dst_node_id for m in sent) == sorted(NODES)
    assert all(m.content["config"]["lr"] == 0.1 and m.content["config"]["server-round"] == 1 for m in sent)
    sizes = {NODES[0]: 10, NODES[1]: 30, NODES[2]: 60}
    moved = {node: [g + i + 1 for g in GLOBAL] for i, node in enumerate(NODES)}
    replies = [reply_from(node, sizes[node], moved[node], metrics={"train_loss": 1.0 + i})  # Flower's name
               for i, node in enumerate(NODES)]
    arrays, metrics = s.aggregate_train(1, reversed(replies))
    assert list(arrays.keys()) == ["w", "b"]  # a ClientApp loading a torch state dict finds its names
    want = [sum(sizes[n] / 100 * moved[n][i] for n in NODES) for i in range(2)]
    for got, w in zip(arrays.to_numpy_ndarrays(), want, strict=True):
        np.testing.assert_allclose(got, w, rtol=1e-6)
    assert store.clients() == sorted(NODES)  # keyed by node id
    assert metrics["train-loss"] == pytest.approx((1.0 * 10 + 2.0 * 30 + 3.0 * 60) / 100)


def test_round_offset_continues_one_clock_for_the_store_and_seeds():
    store = PseudoGradientStore()
    s = RecordingFedAvg(store, round_offset=20, fraction_train=0.67, seed=1)
    sent = send(list(s.configure_train(2, named_global(), ConfigRecord(), MockGrid())))
    assert {m.content["config"]["server-round"] for m in sent} == {22}
    assert len(sent) == 2
    s.aggregate_train(2, [reply_from(m.metadata.dst_node_id, 5, GLOBAL, reply_to=m.metadata.message_id) for m in sent])
    assert store.last_round == 22
    again = RecordingFedAvg(PseudoGradientStore(), round_offset=21, fraction_train=0.67, seed=1)
    resent = list(again.configure_train(1, named_global(), ConfigRecord(), MockGrid()))
    assert sorted(m.metadata.dst_node_id for m in resent) == sorted(m.metadata.dst_node_id for m in sent)


def test_puf_by_node_id_forgets_a_node_it_never_samples_again():
    store = PseudoGradientStore()
    target, kept = NODES[1], [NODES[0], NODES[2]]
    store.record(target, 4, 50, [np.full_like(g, 1.0) for g in GLOBAL])
    step = PUFRound(store, targets=[target], eta=2.0, offline=True, round_offset=4)
    sent = send(list(step.configure_train(1, named_global(), ConfigRecord(), MockGrid())))
    assert sorted(m.metadata.dst_node_id for m in sent) == sorted(kept)
    replies = [reply_from(n, 25, [g + 0.5 for g in GLOBAL], reply_to=m.metadata.message_id)
               for m in sent for n in [m.metadata.dst_node_id]]
    arrays, _ = step.aggregate_train(1, replies)
    # regular PUF: N = 25 + 25 + 50; w + (25/N)0.5 + (25/N)0.5 - η (50/N) 1
    for got, g in zip(arrays.to_numpy_ndarrays(), GLOBAL, strict=True):
        np.testing.assert_allclose(got, g + 0.25 - 2.0 * 0.5, rtol=1e-6)
    assert step.sources == {target: "stored (round 4)"}


def test_partition_ids_name_clients_when_a_map_is_given():
    node_of = {0: NODES[0], 1: NODES[1], 2: NODES[2]}
    store = PseudoGradientStore()
    s = RecordingFedAvg(store, node_of=node_of)
    sent = send(list(s.configure_train(1, named_global(), ConfigRecord(), MockGrid())))
    s.aggregate_train(1, [reply_from(m.metadata.dst_node_id, 5, GLOBAL) for m in sent])
    assert store.clients() == [0, 1, 2]


# -- one implementation: Strategy.start gives what fedunlearn's runner gives -----------------------
TINY = ["data.num_clients=4", "data.partition=iid", "model.name=mlp", "model.mlp.hidden=16", "train.rounds=2",
        "data.backdoor.clients=[]", "probe.metric=forget_acc", "forget=[{clients=[3]}]"]


def test_strategy_start_and_fedunlearns_runner_give_the_same_numbers():
    cfg = load_experiment(ROOT / "experiments/default.toml", TINY)
    data = federated_data(cfg.data, cfg.seed)
    initial = get_weights(build_model(cfg.model, data.input_shape, data.num_classes, cfg.seed))
    fed = local_federation(4, log=lambda *_: None)

    runner_store, start_store = PseudoGradientStore(), PseudoGradientStore()
    runner = RecordingFedAvg.from_config(cfg, runner_store, fed.node_of, range(4))
    arrays = ArrayRecord(initial)
    for rnd in (1, 2):
        arrays, _ = fed.train_round(runner, arrays, rnd)
    started = RecordingFedAvg.from_config(cfg, start_store, fed.node_of, range(4)).start(fed.grid, ArrayRecord(initial), 2)
    for a, b in zip(arrays.to_numpy_ndarrays(), started.arrays.to_numpy_ndarrays(), strict=True):
        np.testing.assert_array_equal(a, b)

    # PUF + IEU: fedunlearn's unlearner (what `fedunlearn run` calls) and the Flower strategies started by hand
    weights = arrays.to_numpy_ndarrays()
    request = ForgetRequest([3], round=2)
    ctx = UnlearningContext(cfg, fed.node_of, weights, 2, runner_store, [], request, [request], [3], [0, 1, 2],
                            initial, lambda s, w, r, _: fed.train_round(s, ArrayRecord(w), r)[0].to_numpy_ndarrays(),
                            lambda w: None)
    via_runner = IEU(PUF(PUFSettings(eta=5.0)), IEUSettings(decay=0.2, noise=0.05)).unlearn(ctx)
    step = PUFRound(start_store, targets=[3], eta=5.0, node_of=fed.node_of, participants=[0, 1, 2], seed=cfg.seed,
                    base_config=local_recipe(cfg), round_offset=2)
    via_start = IEUServerSide(step, 0.2, 0.05, cfg.seed).start(fed.grid, ArrayRecord(weights), 1).arrays
    for a, b in zip(via_runner, via_start.to_numpy_ndarrays(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, b) for a, b in zip(via_runner, weights, strict=True))


def test_relearning_probe_reads_the_metric_before_and_after_each_round():
    cfg = load_experiment(ROOT / "experiments/default.toml", TINY)
    data = federated_data(cfg.data, cfg.seed)
    initial = get_weights(build_model(cfg.model, data.input_shape, data.num_classes, cfg.seed))
    fed = local_federation(4, log=lambda *_: None)
    seen = []
    strategy = RecordingFedAvg.from_config(cfg, PseudoGradientStore(), fed.node_of, range(4))
    res = relearning_probe(fed.grid, strategy, ArrayRecord(initial), lambda a: seen.append(a) or float(len(seen)),
                           metric="forget_acc", tau=2.5, max_rounds=3)
    assert res.curve == [1.0, 2.0, 3.0, 4.0] and res.delay == 2 and res.unit == "rounds"
    assert not np.array_equal(seen[0].to_numpy_ndarrays()[0], seen[-1].to_numpy_ndarrays()[0])


# -- the example Flower app ------------------------------------------------------------------------
def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    return names | {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}


def test_the_example_client_side_imports_nothing_from_fedunlearn():
    client_side = [EXAMPLE / "digits_unlearning" / f for f in ("client_app.py", "task.py")]
    for path in client_side:
        assert not [m for m in _imports(path) if m.split(".")[0] == "fedunlearn"], path
    assert any(m.startswith("fedunlearn") for m in _imports(EXAMPLE / "digits_unlearning" / "server_app.py"))


@pytest.fixture()
def example_app(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    for name in [m for m in sys.modules if m.startswith("digits_unlearning")]:
        monkeypatch.delitem(sys.modules, name)
    from digits_unlearning import client_app, server_app

    run_config = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    return client_app.app, server_app.main, run_config


def test_the_example_app_trains_forgets_probes_and_reports(example_app, tmp_path):
    client, main, run_config = example_app
    run_config = {**run_config, "out": str(tmp_path), "probe-rounds": 3}
    grid = LocalGrid(5, app=client, run_config=run_config, node_ids=[77, 5, 901, 13, 400])  # ids unrelated to partitions
    main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config))
    rows = {r["strategy"]: r for r in read_csv(tmp_path / "summary.csv")}
    assert list(rows) == ["original", "retrain", "puf", "puf+ieu"]
    original, retrain = rows["original"], rows["retrain"]
    assert float(original["backdoor_asr"]) > 0.5 > float(retrain["backdoor_asr"])  # something to forget
    assert float(original["test_acc"]) > 0.8 and float(retrain["test_acc"]) > 0.8
    for name in ("puf", "puf+ieu"):
        r = rows[name]
        assert float(r["gap_forget_acc"]) == pytest.approx(abs(float(r["forget_acc"]) - float(retrain["forget_acc"])),
                                                           abs=1e-5)
        assert r["relearn_delay"] != ""
    assert original["relearn_delay"] == "0"
    curves = read_csv(tmp_path / "seed-0" / "probe" / "all.csv")
    assert {c["model"] for c in curves} == set(rows) and len(curves) == 4 * 4
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {"relearning_curves.png", "gaps_to_retrain.png"}


@pytest.mark.slow
def test_the_example_app_runs_with_flwr_run(tmp_path):
    """`flwr run` of the example, a local simulation of 5 SuperNodes on a SuperLink Flower starts itself."""
    from tests.flwr_cli import FlowerEnv

    out = tmp_path / "out"
    with FlowerEnv(tmp_path / "flwr") as env:
        run = env.flwr_run(EXAMPLE, run_config={"out": str(out), "probe-rounds": 2},
                           federation_config={"num-supernodes": 5}, timeout=600)
        assert run.ok, run.log[-3000:]
    rows = {r["strategy"]: r for r in read_csv(out / "summary.csv")}
    assert list(rows) == ["original", "retrain", "puf", "puf+ieu"]
    assert float(rows["original"]["backdoor_asr"]) > 0.5 > float(rows["retrain"]["backdoor_asr"])
    assert float(rows["puf+ieu"]["gap_backdoor_asr"]) < float(rows["original"]["gap_backdoor_asr"])
