"""The influence strategy: federated primal rounds on the in-process grid against the pooled solve, the dual, settings."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord

from fedunlearn.config import ConfigError, ForgetRequest
from fedunlearn.data import federated_data
from fedunlearn.data.forget_sets import ForgetSets
from fedunlearn.influence import flat_params, primal_delta
from fedunlearn.models import build_model
from fedunlearn.parts import load_experiment
from fedunlearn.phases.compare import check_comparison
from fedunlearn.store import PseudoGradientStore
from fedunlearn.strategies.base import UnlearningContext
from fedunlearn.strategies.influence import Influence, InfluenceSettings, pooled_rows
from fedunlearn.training import get_weights, set_weights
from tests.conftest import ROOT
from tests.local_grid import local_federation

DEFAULT = ROOT / "experiments/default.toml"
TINY = ["data.name=synthetic", "data.synthetic.samples=150", "data.synthetic.features=6", "data.synthetic.classes=3",
        "data.num_clients=3", "data.partition=iid", "data.backdoor.clients=[]", "model.name=logreg",
        "train.rounds=2", "train.batch_size=16", "store.history=false", "probe.metric=forget_acc",
        "forgetting.min_original_test_acc=0", "forgetting.min_original_backdoor_asr=0",
        "forgetting.min_original_forget_acc=0", "forgetting.check_separation=false", "probe.enabled=false",
        "forgetting.strategies=['retrain', 'influence']"]
REQUESTS = {"samples": "forget=[{clients=[1], samples=0.2}]", "class": "forget=[{classes=[2]}]",
            "client": "forget=[{clients=[2]}]"}


def context(kind: str, rounds: list):
    """A context at a perturbed model whose rounds run on the in-process grid, and the model."""
    cfg = load_experiment(DEFAULT, [*TINY, REQUESTS[kind]])
    data = federated_data(cfg.data, cfg.seed)
    model = build_model(cfg.model, data.input_shape, data.num_classes, cfg.seed)
    rng = np.random.default_rng(0)
    weights = [w + rng.normal(0, 0.5, w.shape).astype(np.float32) for w in get_weights(model)]
    set_weights(model, weights)
    request = cfg.forget_requests()[0]
    sets = ForgetSets.of(data, [request], cfg.seed)
    fed = local_federation(3, log=lambda *_: None)

    def run_round(strategy, w, rnd, phase):
        rounds.append(strategy)
        out = fed.train_round(strategy, ArrayRecord(w), rnd)[0].to_numpy_ndarrays()
        strategy.returned = out
        return out

    ctx = UnlearningContext(cfg, fed.node_of, weights, 0, PseudoGradientStore(), [], request, [request],
                            sets.holders[0], sets.remaining_clients(data), weights, run_round, lambda w: None)
    return ctx, model


@pytest.mark.parametrize("kind", ["samples", "class", "client"])
def test_federated_primal_equals_the_pooled_solve(kind):
    rounds: list = []
    ctx, model = context(kind, rounds)
    unlearner = Influence(InfluenceSettings(damping=0.05, tol=1e-10, max_iter=200))
    new = unlearner.unlearn(ctx)
    _, x, y, forget = pooled_rows(ctx, sorted(set(ctx.remaining) | set(ctx.forgotten)))
    assert len(x) == 150 - 30  # every client's rows (the forgotten ones' included); the test fifth apart
    expected = primal_delta(model, flat_params(model), x, y, forget, 0.05, tol=1e-12, max_iter=500).solution
    got = unlearner.delta
    assert float((got - expected).norm() / expected.norm()) < 1e-7
    assert unlearner.result.converged
    assert len(rounds) == 1 + unlearner.result.iterations  # the lossgrad round, one round per CG iteration
    assert all(s.report.bytes_exchanged > 0 for s in rounds)
    moved = flat_params(model) + got
    assert np.allclose(np.concatenate([w.ravel() for w in new]), moved.numpy(), atol=1e-6)
    assert re.search(r"primal: \d+ CG iterations .* converged", ctx.notes["influence"])


def test_dual_and_primal_strategies_give_the_same_model():
    rounds: list = []
    ctx, _ = context("samples", rounds)
    primal = Influence(InfluenceSettings(damping=0.05, tol=1e-10, max_iter=200))
    w_primal = primal.unlearn(ctx)
    ctx_dual, _ = context("samples", rounds := [])
    dual = Influence(InfluenceSettings(damping=0.05, form="dual", memory_mb=0.01))
    w_dual = dual.unlearn(ctx_dual)
    assert rounds == []  # the dual runs no Flower round
    assert float((dual.delta - primal.delta).norm() / primal.delta.norm()) < 1e-6
    a, b = (np.concatenate([w.ravel() for w in ws]) for ws in (w_primal, w_dual))
    assert np.linalg.norm(a - b) / np.linalg.norm(a) < 1e-4
    assert "simulation-side oracle, not a private protocol" in ctx_dual.notes["influence"]
    assert dual.result.block_size < 120  # the memory bound split the kernel into blocks


def test_hvp_rounds_leave_the_model_unchanged():
    """A CG iteration's round returns the weights it was sent (the step is applied at the end)."""
    rounds: list = []
    ctx, _ = context("samples", rounds)
    unlearner = Influence(InfluenceSettings(damping=0.05, tol=1e-12, max_iter=1))
    unlearner.unlearn(ctx)
    assert len(rounds) == 2 and "not converged" in ctx.notes["influence"]
    assert [s.behaviour for s in rounds] == ["lossgrad", "hvp"]
    for s in rounds:
        assert all(np.array_equal(a, b) for a, b in zip(s.returned, ctx.weights, strict=True))


@pytest.mark.parametrize(("setting", "message"), [
    ("damping=0", "forgetting.influence.damping: must be a finite number > 0"),
    ("tol=2", "forgetting.influence.tol: must be in (0, 1)"),
    ("max_iter=0", "forgetting.influence.max_iter: must be an integer >= 1"),
    ("form=\"kernel\"", "forgetting.influence.form: must be 'primal' or 'dual'"),
    ("memory_mb=-1", "forgetting.influence.memory_mb: must be > 0"),
])
def test_settings_are_checked(setting, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        check_comparison(load_experiment(DEFAULT, [*TINY, REQUESTS["samples"],
                                                   f"forgetting.strategies=['influence@{setting}']"]))
    assert "\n" not in str(err.value)


def test_a_model_with_buffers_is_refused_before_training():
    with pytest.raises(ConfigError, match=re.escape("forgetting.strategies: influence needs a model without "
                                                    "buffers, and model.name = 'tests.parts.lab:batchnorm_mlp' "
                                                    "has 2.running_mean, 2.running_var, 2.num_batches_tracked")):
        check_comparison(load_experiment(DEFAULT, [*TINY, REQUESTS["client"],
                                                   "model.name='tests.parts.lab:batchnorm_mlp'"]))


def test_recovery_setting_makes_it_recover():
    assert not Influence().recovers and Influence(InfluenceSettings(recovery=True)).recovers
    assert torch.is_tensor(flat_params(torch.nn.Linear(2, 2)))
    assert ForgetRequest([1], samples=0.2).kind == "samples"


def test_influence_runs_in_a_comparison_with_its_rounds_counted(tmp_path):
    from fedunlearn.phases.compare import compare

    cfg = load_experiment(DEFAULT, [*TINY, REQUESTS["samples"], "forgetting.recovery_rounds=1",
                                    "forgetting.strategies=['retrain', 'influence', 'influence@form=\"dual\"']"])
    rows = compare(local_federation(3, log=lambda *_: None), cfg, tmp_path / "cmp", log=lambda *_: None)
    by = {r["strategy"]: r for r in rows}
    iterations = int(re.search(r"primal: (\d+) CG iterations", by["influence"]["notes"]).group(1))
    assert int(by["influence"]["rounds"]) == 1 + iterations
    assert int(by['influence@form="dual"']["rounds"]) == 0
    assert float(by["influence"]["bytes_exchanged"]) > 0
