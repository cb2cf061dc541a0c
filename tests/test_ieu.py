"""IEU on both sides, the validation split, the recovery stop on it, and the selection of λ and σ.

Definitions: docs/methods.md, "Forgetting" (IEU) and "Evaluation" (the validation split).
"""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord
from torch import nn

from fedunlearn.clients.request import ClientRequest
from fedunlearn.clients.train import NOISE_STREAM, stream_seed, train_behaviour
from fedunlearn.config import DataConfig
from fedunlearn.data import ClientData, build_federated_data, partition, validation_split
from fedunlearn.evaluation import Scorer
from fedunlearn.parts import load_experiment
from fedunlearn.phases.forget import Cost, StrategyOutcome, Timeline
from fedunlearn.report.selection import candidates, select, selection_table
from fedunlearn.settings import ConfigError, build
from fedunlearn.store import PseudoGradientStore
from fedunlearn.strategies import RecordingFedAvg, Unlearner, strategy_spec
from fedunlearn.strategies.ieu import (
    IEU,
    IEUClientSide,
    IEUServerSide,
    IEUSettings,
    ieu_perturb,
    ieu_rng,
)
from tests.mocks import train_reply

GLOBAL = [np.array([1.0, 2.0, 3.0], dtype=np.float32), np.array([[0.5, -0.5]], dtype=np.float32)]


# -- the client-side step, by hand ---------------------------------------------------------------
def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _one_step(lam: float, sigma: float, seed: int = 7, lr: float = 0.1):
    """One linear layer, one batch of 4, one SGD step through the default client behaviour."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    w0, b0 = (p.detach().double().numpy().copy() for p in (model.weight, model.bias))
    x = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 1.0], [2.0, 0.0, -1.0], [0.5, 0.5, 0.5]], dtype=np.float32)
    y = np.array([0, 1, 1, 0], dtype=np.int64)
    config = {"local-epochs": 1, "batch-size": 4, "lr": lr, "momentum": 0.0}
    if lam or sigma:
        config |= {"ieu-decay": lam, "ieu-noise": sigma}
    train_behaviour(model, ClientData(x, y, np.zeros(0, dtype=np.int64)), ClientRequest(config, seed))
    # the gradient of mean cross-entropy, by hand: (softmax − onehot)/B, then x
    g = (_softmax(x.astype(np.float64) @ w0.T + b0) - np.eye(2)[y]) / len(y)
    w1, b1 = w0 - lr * (g.T @ x + lam * w0), b0 - lr * (g.sum(0) + lam * b0)
    return model, w1, b1


def test_client_side_step_is_decayed_sgd_then_rms_scaled_noise():
    lam, sigma, seed = 0.2, 0.3, 7
    model, w1, b1 = _one_step(lam, sigma, seed)
    draws = torch.Generator().manual_seed(stream_seed(seed, NOISE_STREAM))  # the client's noise stream
    eps_w = torch.randn((2, 3), generator=draws).double().numpy()
    eps_b = torch.randn((2,), generator=draws).double().numpy()
    w2 = w1 + sigma * np.sqrt(np.mean(w1 ** 2)) * eps_w
    b2 = b1 + sigma * np.sqrt(np.mean(b1 ** 2)) * eps_b
    np.testing.assert_allclose(model.weight.detach().numpy(), w2, atol=1e-5)
    np.testing.assert_allclose(model.bias.detach().numpy(), b2, atol=1e-5)
    assert not np.allclose(w2, w1, atol=1e-3)  # the noise is there


def test_without_the_keys_the_step_is_plain_sgd():
    model, w1, b1 = _one_step(0.0, 0.0)
    np.testing.assert_allclose(model.weight.detach().numpy(), w1, atol=1e-6)
    np.testing.assert_allclose(model.bias.detach().numpy(), b1, atol=1e-6)


# -- the wrapper: which rounds, which messages ----------------------------------------------------
def make_fedavg(num_clients: int = 3) -> RecordingFedAvg:
    return RecordingFedAvg(PseudoGradientStore(), node_of={p: 100 + p for p in range(num_clients)},
                           participants=range(num_clients), seed=0, base_config={"lr": 0.1})


class Inner(Unlearner):
    """A step that returns the model as it is; recovery is plain FedAvg on mock clients."""

    def unlearn(self, ctx):
        return [w.copy() for w in ctx.weights]

    def recovery_strategy(self, ctx, recovery_round):
        return make_fedavg()


def client_weights(pid: int) -> list[np.ndarray]:
    rng = np.random.default_rng(pid)
    return [(g + rng.normal(size=g.shape)).astype(np.float32) for g in GLOBAL]


def configured(strategy, rnd: int = 1) -> list:
    return list(strategy.configure_train(rnd, ArrayRecord(GLOBAL), ConfigRecord(), grid=None))


def test_client_side_sends_the_keys_in_the_first_rounds_recovery_rounds_only():
    ieu = IEU(Inner(), IEUSettings(decay=0.05, noise=0.01, rounds=2, side="client"))
    for recovery_round in (1, 2, 3, 4):
        strategy = ieu.recovery_strategy(None, recovery_round)
        messages = configured(strategy, recovery_round)
        assert len(messages) == 3
        for m in messages:
            config = m.content["config"]
            assert config["lr"] == pytest.approx(0.1)  # the recipe is still there
            if recovery_round <= 2:
                assert isinstance(strategy, IEUClientSide)
                assert (config["ieu-decay"], config["ieu-noise"]) == (pytest.approx(0.05), pytest.approx(0.01))
            else:
                assert not isinstance(strategy, IEUClientSide)
                assert "ieu-decay" not in config and "ieu-noise" not in config
    assert ieu.min_recovery_rounds == 2


def test_client_side_wrapper_aggregates_as_its_inner_strategy():
    wrapped, plain = IEUClientSide(make_fedavg(), decay=0.1, noise=0.1), make_fedavg()
    outs = []
    for s in (wrapped, plain):
        configured(s)
        arrays, _ = s.aggregate_train(1, [train_reply(p, 10 + p, client_weights(p)) for p in range(3)])
        outs.append(arrays.to_numpy_ndarrays())
    for a, b in zip(*outs, strict=True):
        np.testing.assert_array_equal(a, b)
    assert wrapped.report.succeeded == [0, 1, 2] and wrapped.clock(1) == 1  # the inner's, through the wrapper


def _ctx(notes: dict) -> SimpleNamespace:
    return SimpleNamespace(weights=[w.copy() for w in GLOBAL], init_weights=GLOBAL, cfg=SimpleNamespace(seed=3),
                           clock=31, notes=notes)


def test_client_side_leaves_the_step_alone_and_server_side_perturbs_it():
    notes: dict = {}
    client = IEU(Inner(), IEUSettings(decay=0.5, noise=0.5, side="client"))
    for got, w in zip(client.unlearn(_ctx(notes)), GLOBAL, strict=True):
        np.testing.assert_array_equal(got, w)
    assert notes["ieu"].startswith("client side")
    server = IEU(Inner(), IEUSettings(decay=0.5, noise=0.5))
    expected = ieu_perturb(GLOBAL, 0.5, 0.5, ieu_rng(3, 31))
    for got, w in zip(server.unlearn(_ctx({})), expected, strict=True):
        np.testing.assert_array_equal(got, w)
    assert server.min_recovery_rounds == 0
    assert isinstance(IEU(Inner(), IEUSettings(rounds=2)).recovery_strategy(_ctx({}), 1), IEUServerSide)


def test_side_is_validated():
    cfg = load_experiment("experiments/backdoor.toml")
    assert strategy_spec("puf+ieu@ieu.side=\"client\"", cfg.forgetting).settings[1].side == "client"
    with pytest.raises(ConfigError, match="side"):
        strategy_spec("puf+ieu@ieu.side=\"both\"", cfg.forgetting)


# -- the recovery stop reads the validation split -------------------------------------------------
class ValScorer:
    """Weights [a] score accuracy a on validation; reading the test set fails the test."""

    selection_metric = "val_acc"

    def selection_score(self, weights):
        return float(weights[0])

    def test(self, weights):
        raise AssertionError("the recovery stop read the test set")


def _recover(unlearner: Unlearner, start: float, target: float = 0.9) -> tuple[int, list]:
    timeline = object.__new__(Timeline)
    timeline.cfg = SimpleNamespace(forgetting=SimpleNamespace(recovery="until-retrain", recovery_rounds=30,
                                                              recovery_tolerance=0.01))
    timeline.outcome, timeline.target = StrategyOutcome("x", [], [], Cost()), target
    timeline.scorer, timeline.unlearner = ValScorer(), unlearner
    used = []

    def next_round(strategy, weights, phase):
        used.append(strategy)
        return [np.float32(weights[0] + 0.05)]

    timeline.recover(SimpleNamespace(next_round=next_round), [np.float32(start)])
    return timeline.outcome.recovery_rounds, used


def test_recovery_stops_on_validation_accuracy_and_client_side_ieu_rounds_always_run():
    assert _recover(Inner(), 0.80)[0] == 2  # 0.80 -> 0.85 -> 0.90 >= 0.89
    assert _recover(Inner(), 0.95)[0] == 0
    rounds, used = _recover(IEU(Inner(), IEUSettings(side="client", rounds=1)), 0.95)
    assert rounds == 1 and isinstance(used[0], IEUClientSide)  # already at the target: its round runs anyway
    rounds, used = _recover(IEU(Inner(), IEUSettings(side="client", rounds=3)), 0.80)
    assert rounds == 3 and [isinstance(s, IEUClientSide) for s in used] == [True, True, True]
    assert _recover(IEU(Inner(), IEUSettings(side="server", rounds=3)), 0.95)[0] == 0


# -- the validation split -------------------------------------------------------------------------
def data_config(**kw) -> DataConfig:
    return build(DataConfig, {"name": "digits", "num_clients": 10, **kw}, "data.")


def digest(parts) -> str:
    return hashlib.sha256(b"".join(np.asarray(p, dtype=np.int64).tobytes() for p in parts)).hexdigest()[:16]


@pytest.mark.parametrize(("name", "pinned"), [("dirichlet", "c35fa16c99137f68"), ("iid", "e55ac77e91701dab")])
def test_without_validation_the_partition_is_as_before(name, pinned):
    # pinned: the partition of seed 3 computed by the code before the validation split existed
    ds, parts = partition(data_config(partition=name), 3)
    assert digest(parts) == pinned
    assert build_federated_data(data_config(partition=name), 3).x_val is None


def test_validation_split_is_held_out_before_partitioning_seeded_and_stratified():
    cfg = data_config(partition="dirichlet", validation=0.2)
    ds, parts = partition(cfg, 0)
    val, pool = validation_split(ds.y_train, 0.2, 0)
    every = np.concatenate([val, *parts])
    assert len(every) == len(np.unique(every)) == len(ds.y_train)  # disjoint from every client, nothing lost
    for c in range(10):
        assert (ds.y_train[val] == c).sum() == round(0.2 * (ds.y_train == c).sum())  # stratified
    assert np.array_equal(val, validation_split(ds.y_train, 0.2, 0)[0])
    assert not np.array_equal(val, validation_split(ds.y_train, 0.2, 1)[0])
    fd = build_federated_data(cfg, 0)
    np.testing.assert_array_equal(fd.x_val, ds.x_train[val])  # from the training pool: the test set is apart
    np.testing.assert_array_equal(fd.x_test, ds.x_test)
    for client, idx in zip(fd.clients, parts, strict=True):
        np.testing.assert_array_equal(client.x_train, ds.x_train[idx])
    with pytest.raises(ConfigError, match="data.validation"):
        load_experiment("experiments/backdoor.toml", ["data.validation=0.5"])


def test_scorer_reports_val_acc_and_selects_on_it():
    with_split = load_experiment("experiments/backdoor.toml", ["data.validation=0.2"])
    scorer = Scorer(with_split, build_federated_data(with_split.data, 0))
    w = scorer.initial_weights()
    m = scorer.summary_metrics(w)
    assert m["val_acc"] == pytest.approx(scorer.validation(w)[0]) and not np.isnan(m["val_acc"])
    assert scorer.selection_metric == "val_acc" and scorer.selection_score(w) == m["val_acc"]
    plain = load_experiment("experiments/backdoor.toml")
    scorer = Scorer(plain, build_federated_data(plain.data, 0))
    assert np.isnan(scorer.summary_metrics(w)["val_acc"]) and scorer.selection_metric == "test_acc"


# -- the selection ---------------------------------------------------------------------------------
def _rows(label, spec, delays, vals, aucs, epochs=(40, 40)):
    return [{"strategy": label, "spec": spec, "seed": s, "relearn_delay": d, "val_acc": v, "relearn_auc": a,
             "client_epochs": e} for s, (d, v, a, e) in enumerate(zip(delays, vals, aucs, epochs, strict=True))]


def _ieu(decay, noise, side):
    return f'puf+ieu@ieu.decay={decay},ieu.noise={noise},ieu.side="{side}"'


SUMMARY = [
    *_rows("retrain", "retrain", ["> 10", "> 10"], ["0.95", "0.97"], ["0.3", "0.3"]),  # bar: 0.96 - 0.01
    *_rows("puf", "puf", ["2", "4"], ["0.96", "0.96"], ["0.9", "0.9"]),
    *_rows("s-a", _ieu(0.1, 0.1, "server"), ["3", "> 10"], ["0.95", "0.96"], ["0.6", "0.6"]),  # (3 + 11)/2 = 7
    *_rows("s-b", _ieu(0.5, 0.5, "server"), ["> 10", "> 10"], ["0.93", "0.95"], ["0.2", "0.2"]),  # 0.94: too low
    *_rows("s-c", _ieu(0.2, 0.1, "server"), ["7", "7"], ["0.96", "0.96"], ["0.5", "0.5"]),  # 7, lower AUC than s-a
    *_rows("c-a", _ieu(0.01, 0.04, "client"), ["2", "4"], ["0.96", "0.95"], ["0.8", "0.8"]),
    *_rows("c-b", _ieu(0.08, 0.4, "client"), ["1", "1"], ["0.97", "0.97"], ["0.9", "0.9"]),
]


def test_selection_maximises_mean_delay_among_entries_within_the_accuracy_bar():
    found, bar = candidates(SUMMARY)
    assert bar == pytest.approx(0.95)
    by = {c.label: c for c in found}
    assert set(by) == {"s-a", "s-b", "s-c", "c-a", "c-b"}  # retrain and puf are no candidates
    assert (by["s-a"].delay, by["s-a"].censored, by["s-a"].side, by["s-a"].decay) == (7.0, 1, "server", 0.1)
    assert by["s-b"].delay == 11.0 and not by["s-b"].eligible  # the longest delay, below the bar
    assert by["c-a"].validation == pytest.approx(0.955) and by["c-a"].eligible
    chosen = select(SUMMARY)
    assert chosen["server"].label == "s-c"  # ties with s-a at 7; the lower AUC wins
    assert chosen["client"].label == "c-a"
    table = selection_table(SUMMARY)
    assert "**s-c**" in table and "**c-a**" in table and "| puf |" in table


def test_selection_refuses_a_sweep_without_validation_accuracy():
    rows = [{**r, "val_acc": ""} for r in SUMMARY]
    with pytest.raises(ValueError, match="data.validation"):
        select(rows)


def test_selection_reads_the_generative_validation_log_likelihood():
    """A generative sweep holds val_ll (nats per sample), not val_acc: the bar is retrain's val_ll, never
    'needs data.validation' when a split was held out."""
    rows = [{**{k: v for k, v in r.items() if k != "val_acc"}, "val_ll": str(-25 + 10 * float(r["val_acc"]))}
            for r in SUMMARY]
    found, bar = candidates(rows, tolerance=0.1)
    assert bar == pytest.approx(-25 + 9.6 - 0.1)
    assert {c.label for c in found if c.eligible} == {c.label for c in candidates(SUMMARY)[0] if c.eligible}
    assert "mean val_ll" in selection_table(rows, tolerance=0.1)


def test_the_validation_setting_is_in_a_settings_record_only_when_a_split_is_held_out():
    from fedunlearn.config import load_config
    from fedunlearn.provenance import training_settings
    from tests.conftest import ROOT

    base = load_config(ROOT / "experiments/default.toml")
    assert "validation" not in training_settings(base)["data"]  # records written before the setting stay valid
    split = load_config(ROOT / "experiments/default.toml", ["data.validation=0.2"])
    assert training_settings(split)["data"]["validation"] == 0.2
