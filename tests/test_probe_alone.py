"""The probe's ``alone`` mode: one Flower round per SGD step equals one continuous local SGD run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from torch import nn

from fedunlearn.clients import BEHAVIOURS, ClientRequest
from fedunlearn.clients.probe import STATE_PREFIX, probe_behaviour
from fedunlearn.config import ForgetRequest
from fedunlearn.data import ClientData
from fedunlearn.phases.probe import PROBE_CLOCK, ProbeAloneRound
from fedunlearn.training import get_weights, set_weights, train_local

ROOT = Path(__file__).resolve().parents[1]
N, BATCH, STEPS, SEED, LR, MOMENTUM = 37, 8, 13, 1234, 0.05, 0.9  # 5 batches an epoch (the last of 5): 3 epochs


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def small_data() -> ClientData:
    rng = np.random.default_rng(0)
    return ClientData(rng.normal(size=(N, 6)).astype(np.float32), rng.integers(0, 3, N).astype(np.int64),
                      np.zeros(0, dtype=np.int64))


def config(step: int, probe_id: str = "p1", steps: int = STEPS, momentum: float = MOMENTUM) -> dict:
    return {"probe-step": step, "probe-steps": steps, "probe-id": probe_id, "probe-lr": LR, "probe-seed": SEED,
            "batch-size": BATCH, "momentum": momentum}


def stepwise(weights, data: ClientData, state, steps: int = STEPS, momentum: float = MOMENTUM):
    """The rounds of one probe with a single client: each step from the weights the last one returned."""
    model = small_model()
    for s in range(steps):
        set_weights(model, weights)
        run = probe_behaviour(model, data, ClientRequest(config(s, steps=steps, momentum=momentum), seed=s,
                                                         state=state))
        assert run.epochs == pytest.approx(1 / 5)
        weights = get_weights(model)
    return weights


@pytest.mark.parametrize("state_type", [dict, RecordDict])
@pytest.mark.parametrize("momentum", [MOMENTUM, 0.0])
def test_probe_steps_one_at_a_time_equal_one_continuous_local_run(state_type, momentum):
    data, w0 = small_data(), get_weights(small_model())
    continuous = small_model()
    res = train_local(continuous, data.x_train, data.y_train, epochs=10**6, batch_size=BATCH, lr=LR,
                      momentum=momentum, seed=SEED, max_steps=STEPS)
    assert res.steps == STEPS
    state = state_type()
    got = stepwise(w0, data, state, momentum=momentum)
    for g, w in zip(got, get_weights(continuous), strict=True):
        assert np.array_equal(g, w)  # bit-identical: same batches, momentum carried
    assert not any(k.startswith(STATE_PREFIX) for k in state)  # the last step keeps no momentum


def test_a_step_without_its_predecessors_momentum_is_refused_and_step_0_drops_stale_state():
    data, model = small_data(), small_model()
    with pytest.raises(RuntimeError, match="no momentum from step 2"):
        probe_behaviour(model, data, ClientRequest(config(3), seed=0, state={}))
    state = RecordDict()
    probe_behaviour(model, data, ClientRequest(config(0, probe_id="old"), seed=0, state=state))
    assert list(state) == [f"{STATE_PREFIX}old:0"]
    probe_behaviour(model, data, ClientRequest(config(0, probe_id="new"), seed=0, state=state))
    assert list(state) == [f"{STATE_PREFIX}new:0"]


def test_probe_is_a_registered_behaviour():
    assert BEHAVIOURS.factory("probe") is probe_behaviour


def test_the_probe_round_asks_every_holder_for_its_step_on_its_forget_samples():
    request = ForgetRequest(clients=[2])
    strategy = ProbeAloneRound(node_of={p: 100 + p for p in range(4)}, participants=[0, 2], seed=0,
                               base_config={"batch-size": 16, "momentum": 0.9}, round_offset=PROBE_CLOCK,
                               holders=[2, 0], requests=[request], lr=0.002, steps=30, probe_id="abc")
    messages = list(strategy.configure_train(4, ArrayRecord([np.zeros(2, np.float32)]), ConfigRecord(), None))
    assert [m.metadata.dst_node_id for m in messages] == [100, 102]
    assert {m.metadata.message_type for m in messages} == {"train.probe"}
    configs = [dict(m.content["config"]) for m in messages]
    assert [(c["probe-step"], c["probe-steps"], c["probe-lr"], c["probe-id"], c["server-round"]) for c in configs] == [
        (3, 30, 0.002, "abc", PROBE_CLOCK + 4)] * 2
    assert all('"clients": [2]' in c["only"] for c in configs)
    # each holder's seed is fixed for the whole probe (the first round's), and differs between holders
    later = [dict(m.content["config"]) for m in strategy.configure_train(9, ArrayRecord([np.zeros(2, np.float32)]),
                                                                         ConfigRecord(), None)]
    assert [c["probe-seed"] for c in later] == [c["probe-seed"] for c in configs]
    assert configs[0]["probe-seed"] != configs[1]["probe-seed"]


# -- end to end: `fedunlearn probe --mode alone` on a tiny federation ------------------------------
TINY = ["data.num_clients=4", "data.partition=iid", "model.name=mlp", "model.mlp.hidden=32", "train.rounds=2",
        "train.local_epochs=1", "train.batch_size=16", "store.history=false", "forgetting.strategies=['puf']",
        "data.backdoor.clients=[]", "forget=[]",
        "forgetting.min_original_test_acc=0", "forgetting.check_separation=false", "probe.metric=auto", "probe.alone_lr=0.05",
        "probe.alone_max_steps=6"]
SAMPLES = "1:0.06"  # ~27 of client 1's ~450 samples: 2 batches an epoch, so 6 steps span 3 epochs


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    from fedunlearn.cli import main

    out = tmp_path_factory.mktemp("alone") / "train"
    assert main(["train", str(ROOT / "experiments/default.toml"), *[a for o in TINY for a in ("--set", o)],
                 "--out", str(out)]) == 0
    return out


def alone_curves(run: Path, *flags: str) -> dict[str, list[float]]:
    from fedunlearn.cli import main
    from fedunlearn.results import read_csv

    assert main(["probe", str(run), *flags, "--metric", "forget_loss", "--mode", "alone"]) == 0
    rows = read_csv(run / "probe" / "alone.csv")
    assert {r["unit"] for r in rows} == {"steps"}
    curves: dict[str, list[float]] = {}
    for r in rows:
        curves.setdefault(r["model"], []).append(float(r["value"]))
    return curves


def server_side_curve(run: Path, request: ForgetRequest, partition_id: int) -> list[float]:
    """The old simulation: the forgotten client's continuous local SGD run, computed on the server."""
    import copy

    from fedunlearn.flower.client_app import client_seed
    from fedunlearn.phases.probe import prepare_probe

    job = prepare_probe(run, request, "forget_loss", "alone", None, [])
    cfg, scorer = job.cfg, job.scorer
    model = copy.deepcopy(scorer.model)
    set_weights(model, job.original)
    value = scorer.probe_value("forget_loss", job.original, job.original)
    curve = [value(job.original)]
    train_local(model, scorer.x_forget, scorer.y_forget, epochs=10**6, batch_size=cfg.train.batch_size,
                lr=cfg.probe.alone_lr, momentum=cfg.train.momentum,
                seed=client_seed(cfg.seed, PROBE_CLOCK + 1, partition_id),
                after_step=lambda m: curve.append(value(get_weights(m))) and False,
                max_steps=cfg.probe.alone_max_steps)
    return curve


@pytest.mark.slow
def test_alone_probe_of_one_client_retraces_its_local_run(trained):
    curve = alone_curves(trained, "--samples", SAMPLES)["original"]
    assert len(curve) == 6 + 1
    want = server_side_curve(trained, ForgetRequest(clients=[1], samples=0.06), 1)
    assert curve == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert curve[-1] < curve[0] - 0.01  # it relearns: the check compares a curve that moves


@pytest.mark.slow
def test_alone_probe_of_a_class_averages_every_holder(trained):
    curve = alone_curves(trained, "--class", "3")["original"]
    assert len(curve) == 6 + 1 and all(np.isfinite(curve))
    assert curve[-1] < curve[0]
