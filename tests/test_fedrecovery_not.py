"""FedRecovery and NoT (docs/methods.md, "Forgetting") against numbers computed by hand."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from fedunlearn.config import ExperimentConfig, ForgetRequest, load_config
from fedunlearn.parts import check_parts, load_experiment
from fedunlearn.settings import ConfigError
from fedunlearn.store import PseudoGradientStore
from fedunlearn.strategies import strategy_spec
from fedunlearn.strategies.base import UnlearningContext
from fedunlearn.strategies.fedrecovery import FedRecovery, FedRecoverySettings
from fedunlearn.strategies.negation import NoT, NoTSettings

ROOT = Path(__file__).resolve().parents[1]
CFG = ExperimentConfig()


def split(v):
    """A flat 3-vector as a model of two tensors: A (2,) and B (1, 1)."""
    return [np.array(v[:2], np.float32), np.array([[v[2]]], np.float32)]


# (round, client, n_k, Δ_k flat) — client 2 is forgotten; it trains in rounds 1 and 2, not in 3
HISTORY = [
    (1, 0, 1, [2, 0, 0]), (1, 1, 1, [0, 2, 0]), (1, 2, 2, [4, 4, 2]),
    (2, 0, 3, [1, -1, 0]), (2, 2, 1, [-3, 1, 4]),
    (3, 0, 1, [2, 2, 2]), (3, 1, 1, [0, 0, -2]),
]
W_T = split([1, 1, 1])


def no_rounds(*_):
    raise AssertionError("this step runs no Flower round")


def history_store(tmp_path: Path, extra_round: bool = False) -> PseudoGradientStore:
    store = PseudoGradientStore(tmp_path, keep_history=True)
    for rnd, pid, n, delta in HISTORY:
        store.record(pid, rnd, n, split(delta))
    if extra_round:  # a round after the request (another timeline's): must not be read
        store.record(2, 4, 100, split([50, 50, 50]))
    return store


def context(cfg, weights, store, forgotten, remaining, last=3, clock=3, kind="client"):
    request = ForgetRequest(list(forgotten), round=clock) if kind == "client" else ForgetRequest(classes=[1], round=clock)
    return UnlearningContext(cfg, {p: 100 + p for p in range(3)}, weights, clock, store, [(store, last)], request,
                             [request], list(forgotten), list(remaining), [np.zeros_like(w) for w in weights],
                             no_rounds, lambda w: None)


def with_lr(server_lr: float, seed: int = 0) -> ExperimentConfig:
    return dataclasses.replace(CFG, seed=seed, train=dataclasses.replace(CFG.train, server_lr=server_lr))


def assert_flat(got, want):
    np.testing.assert_allclose(np.concatenate([g.ravel() for g in got]), np.array(want, dtype=np.float64),
                               rtol=1e-6, atol=1e-6)


# -- FedRecovery -------------------------------------------------------------------------------
# By hand (η_s = 1), client 2 forgotten:
#   round 1: g = (1·[2,0,0] + 1·[0,2,0] + 2·[4,4,2]) / 4 = [2.5, 2.5, 1];  g^{-u} = [1, 1, 0];  δ = [1.5, 1.5, 1]
#            ‖g‖² = 13.5
#   round 2: g = (3·[1,-1,0] + 1·[-3,1,4]) / 4 = [0, -0.5, 1];  g^{-u} = [1, -1, 0];  δ = [-1, 0.5, 1];  ‖g‖² = 1.25
#   round 3: g = ([2,2,2] + [0,0,-2]) / 2 = [1, 1, 0];  client 2 absent: δ = 0;  ‖g‖² = 2
#   Σ ‖g‖² = 16.75 = 67/4, so p = (54, 5, 8) / 67
#   Σ p δ = (54·[1.5,1.5,1] + 5·[-1,0.5,1]) / 67 = [76, 83.5, 59] / 67
P_BY_HAND = [54 / 67, 5 / 67, 8 / 67]
STEP_BY_HAND = [76 / 67, 83.5 / 67, 59 / 67]


def test_fedrecovery_weights_and_model_by_hand(tmp_path):
    from fedunlearn.strategies.fedrecovery import fedrecovery_step

    store = history_store(tmp_path)
    rounds = [[store.get(p, r) for p in range(3) if r in store.history_rounds(p)] for r in (1, 2, 3)]
    step, p = fedrecovery_step(rounds, {2}, 1.0)
    np.testing.assert_allclose(p, P_BY_HAND, rtol=1e-12)
    assert_flat(step, STEP_BY_HAND)

    ctx = context(CFG, W_T, store, [2], [0, 1])
    got = FedRecovery(FedRecoverySettings()).unlearn(ctx)
    assert all(g.dtype == np.float32 for g in got) and [g.shape for g in got] == [(2,), (1, 1)]
    assert_flat(got, [1 - 76 / 67, 1 - 83.5 / 67, 1 - 59 / 67])  # w' = w_T − Σ p δ
    assert "3 rounds (rounds 1-3), largest p_t 0.806 (round 1)" in ctx.notes["fedrecovery"]


def test_fedrecovery_scale_and_server_lr_by_hand(tmp_path):
    store = history_store(tmp_path)
    got = FedRecovery(FedRecoverySettings(scale=2.0)).unlearn(context(CFG, W_T, store, [2], [0, 1]))
    assert_flat(got, [1 - 152 / 67, 1 - 167 / 67, 1 - 118 / 67])
    # η_s = 0.5 halves every g and δ: p is unchanged, the step halves
    got = FedRecovery(FedRecoverySettings()).unlearn(context(with_lr(0.5), W_T, store, [2], [0, 1]))
    assert_flat(got, [1 - 38 / 67, 1 - 41.75 / 67, 1 - 29.5 / 67])


def test_fedrecovery_forgetting_a_client_that_trained_alone_removes_that_round(tmp_path):
    """Client 1 forgotten: the rounds it sat out (2) have δ = 0; in round 3 the rest is client 0 alone."""
    store = history_store(tmp_path)
    # round 1: g^{-u} = ([2,0,0] + 2·[4,4,2]) / 3 = [10/3, 8/3, 4/3]; δ = [2.5-10/3, 2.5-8/3, 1-4/3] = [-5/6, -1/6, -1/3]
    # round 2: client 1 absent, δ = 0;  round 3: g^{-u} = [2,2,2], δ = [1,1,0] − [2,2,2] = [-1, -1, -2]
    want_step = [(54 * -5 / 6 + 8 * -1) / 67, (54 * -1 / 6 + 8 * -1) / 67, (54 * -1 / 3 + 8 * -2) / 67]
    got = FedRecovery().unlearn(context(CFG, W_T, store, [1], [0, 2]))
    assert_flat(got, [1 - s for s in want_step])


def test_fedrecovery_reads_only_the_timelines_past_rounds(tmp_path):
    store = history_store(tmp_path, extra_round=True)
    got = FedRecovery().unlearn(context(CFG, W_T, store, [2], [0, 1], last=3))
    assert_flat(got, [1 - s for s in STEP_BY_HAND])  # round 4 lies after the store's last round: ignored


def test_fedrecovery_noise_is_seeded_and_reproducible(tmp_path):
    store = history_store(tmp_path)
    plain = FedRecovery().unlearn(context(CFG, W_T, store, [2], [0, 1]))
    noisy = FedRecoverySettings(noise=0.1)
    a = FedRecovery(noisy).unlearn(context(CFG, W_T, store, [2], [0, 1]))
    b = FedRecovery(noisy).unlearn(context(CFG, W_T, store, [2], [0, 1]))
    other = FedRecovery(noisy).unlearn(context(with_lr(1.0, seed=1), W_T, store, [2], [0, 1]))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))  # same seed and round: same bits
    assert not all(np.array_equal(x, y) for x, y in zip(a, plain, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, other, strict=True))

    # On a large model whose history is all zero (no step), what is added is N(0, σ²).
    big = PseudoGradientStore(tmp_path / "big", keep_history=True)
    zeros = [np.zeros(200_000, np.float32)]
    for pid in range(3):
        big.record(pid, 1, 10, zeros)
    out = FedRecovery(FedRecoverySettings(noise=0.1)).unlearn(context(CFG, zeros, big, [2], [0, 1], last=1))
    assert abs(float(out[0].mean())) < 0.002 and float(out[0].std()) == pytest.approx(0.1, rel=0.01)


def test_fedrecovery_is_one_shot_unless_recovery_is_set():
    assert FedRecovery().recovers is False and FedRecovery(FedRecoverySettings(recovery=True)).recovers is True
    cfg = load_config(ROOT / "experiments/default.toml", ["forgetting.fedrecovery.recovery=true"])
    assert strategy_spec("fedrecovery", cfg.forgetting).build().recovers is True
    assert strategy_spec("fedrecovery@recovery=false", cfg.forgetting).build().recovers is False
    assert FedRecovery().serves("client") == "" and FedRecovery().serves("samples") != ""


def test_fedrecovery_without_history_fails_clearly(tmp_path):
    from fedunlearn.strategies import UnlearningError

    with pytest.raises(UnlearningError, match="fedrecovery: no stored history; set store.history = true"):
        FedRecovery().unlearn(context(CFG, W_T, PseudoGradientStore(tmp_path), [2], [0, 1]))


# -- NoT ---------------------------------------------------------------------------------------
NET = [np.array([0.5, -1.0], np.float32),                                # a 1-D tensor first (a bias, a scale)
       np.array([[1.0, -2.0], [3.0, 0.0]], np.float32),                  # the first weight tensor
       np.array([0.25, 4.0], np.float32),
       np.array([[-1.5, 2.5]], np.float32)]


def test_not_negates_the_first_weight_tensor_by_default():
    ctx = context(CFG, NET, PseudoGradientStore(), [2], [0, 1])
    got = NoT(NoTSettings()).unlearn(ctx)
    np.testing.assert_array_equal(got[1], np.array([[-1.0, 2.0], [-3.0, -0.0]], np.float32))
    for i in (0, 2, 3):
        np.testing.assert_array_equal(got[i], NET[i])
    assert ctx.notes["not_layers"] == "1 2x2"
    assert NET[1][0, 0] == 1.0  # the context's weights are not changed in place


def test_not_negates_the_layers_it_is_given_by_index_or_name():
    got = NoT(NoTSettings(layers=[3, 0])).unlearn(context(CFG, NET, PseudoGradientStore(), [2], [0, 1]))
    np.testing.assert_array_equal(got[0], np.array([-0.5, 1.0], np.float32))
    np.testing.assert_array_equal(got[3], np.array([[1.5, -2.5]], np.float32))
    np.testing.assert_array_equal(got[1], NET[1])
    np.testing.assert_array_equal(got[2], NET[2])

    # By name, on the default experiment's cnn: 0.weight 0.bias 3.weight 3.bias 7.weight 7.bias 9.weight 9.bias
    from fedunlearn.data import federated_data
    from fedunlearn.models import build_model
    from fedunlearn.training import get_weights

    cfg = load_config(ROOT / "experiments/default.toml")
    data = federated_data(cfg.data, cfg.seed)
    weights = get_weights(build_model(cfg.model, data.input_shape, data.num_classes, cfg.seed))
    ctx = context(cfg, weights, PseudoGradientStore(), [7], [0, 1])
    got = NoT(NoTSettings(layers=["7.weight", 1])).unlearn(ctx)
    for i, (g, w) in enumerate(zip(got, weights, strict=True)):
        np.testing.assert_array_equal(g, -w if i in (1, 4) else w)
    assert ctx.notes["not_layers"].startswith("1 (0.bias) 16, 4 (7.weight) 64x128")


def test_not_refuses_an_unknown_layer_in_one_line():
    cfg = load_config(ROOT / "experiments/default.toml")
    with pytest.raises(ConfigError, match=r"^forgetting.not.layers: 'conv9.weight' is not a tensor of the model; "
                                          r"its state-dict names are 0.weight, 0.bias, ") as err:
        NoT(NoTSettings(layers=["conv9.weight"])).unlearn(context(cfg, NET, PseudoGradientStore(), [2], [0, 1]))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"^forgetting.not.layers: index 4 is out of range; the model has 4 tensors"):
        NoT(NoTSettings(layers=[4])).unlearn(context(CFG, NET, PseudoGradientStore(), [2], [0, 1]))
    f = load_config(ROOT / "experiments/default.toml").forgetting
    with pytest.raises(ConfigError, match=r"^forgetting.not.layers: an index must be >= 0"):
        strategy_spec("not@layers=[-1]", f)
    with pytest.raises(ConfigError, match=r"^forgetting.not.layers: names a tensor twice"):
        strategy_spec("not", dataclasses.replace(f, settings={"not": {"layers": [0, 0]}}))
    with pytest.raises(ConfigError, match=r"^forgetting.not.layers\[0\]: expected int or str"):
        strategy_spec("not@layers=[1.5]", f)


def test_not_serves_every_kind_and_recovers():
    assert all(NoT(NoTSettings()).serves(k) == "" for k in ("client", "samples", "class"))
    assert NoT.recovers is True and NoT.needs_history is False


# -- the registry ------------------------------------------------------------------------------
def test_both_are_listed_and_fedrecovery_needs_the_history():
    cfg = load_config(ROOT / "experiments/default.toml", ['forgetting.strategies=["retrain", "fedrecovery", "not"]'])
    specs = check_parts(cfg)
    assert [s.label for s in specs] == ["retrain", "fedrecovery", "not"]
    assert specs[1].needs_history and not specs[2].needs_history
    assert isinstance(specs[1].build(), FedRecovery) and isinstance(specs[2].build(), NoT)
    with pytest.raises(ConfigError, match=r"^forgetting.strategies: fedrecovery needs the pseudo-gradient history; "
                                          r"set store.history = true$"):
        check_parts(load_config(ROOT / "experiments/default.toml",
                                ["store.history=false", 'forgetting.strategies=["retrain", "fedrecovery", "not"]']))
    check_parts(load_config(ROOT / "experiments/default.toml", ["store.history=false", 'forgetting.strategies=["not"]']))
    with pytest.raises(ConfigError, match=r"^forgetting.fedrecovery.scale: must be a finite number >= 0"):
        check_parts(load_config(ROOT / "experiments/default.toml", ["forgetting.fedrecovery.scale=-1"]))
    with pytest.raises(ConfigError, match=r"^forgetting.strategies: fedrecovery serves client requests only"):
        check_parts(load_config(ROOT / "experiments/default.toml",
                                ['forgetting.strategies=["fedrecovery"]', "forget=[{classes=[3]}]"]))


def test_an_unknown_layer_is_refused_before_training():
    with pytest.raises(ConfigError, match=r"^forgetting.not.layers: 'conv9.weight' is not a tensor of the model"):
        load_experiment(ROOT / "experiments/default.toml",
                        ["forgetting.strategies=[{strategy = 'not', layers = ['conv9.weight']}]"])
