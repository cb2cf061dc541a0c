"""Feasible-update masking and augmentation during unlearning: hand-computed cases, mock rounds, and a tiny run."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from torch import nn

from fedunlearn.augmentation import augmenter
from fedunlearn.config import ConfigError, ForgetRequest
from fedunlearn.parts import load_experiment
from fedunlearn.phases.compare import check_comparison, compare
from fedunlearn.store import PseudoGradientStore
from fedunlearn.strategies.base import UnlearningError
from fedunlearn.strategies.mask import FeasibleUpdateMask, HolderStats, feasible_mask
from fedunlearn.strategies.puf import PUFRound
from fedunlearn.strategies.wrapping import WithClientConfig
from fedunlearn.training import batch_gradient_stats
from tests.local_grid import local_federation
from tests.mocks import send, train_reply
from tests.test_granularity import DEFAULT, TINY


def f32(*values):
    return np.array(values, dtype=np.float32)


# -- the test itself, by hand ---------------------------------------------------------------------
def test_mask_on_a_constructed_case():
    """One holder, B = 4: se = s / 2 = [0.1, 0.2, 0.05, 0], |m| / se = [5, 0.5, 6, 0/0] -> reliable [T, F, T, F].
    g = [1, 1, -1, 1], r = [0.2, 0.3, 0.5, 0]: sign(g)·r = [0.2, 0.3, -0.5, 0] -> feasible [T, T, F, T]."""
    holder = HolderStats(10, [f32(0.5, 0.1, -0.3, 0.0)], [f32(0.2, 0.4, 0.1, 0.0)], 4)
    step, retained = [f32(1, 1, -1, 1)], [f32(0.2, 0.3, 0.5, 0.0)]
    assert feasible_mask(step, retained, [holder], 2.0)[0].tolist() == [True, False, False, False]
    assert feasible_mask(step, None, [holder], 2.0)[0].tolist() == [True, False, True, False]  # special form
    assert feasible_mask(step, None, [holder], 0.4)[0].tolist() == [True, True, True, False]  # 0.5 >= 0.4


def test_mask_pools_two_holders_by_their_forget_set_sizes():
    """w = (1/4, 3/4): m = 0.25·0.4 + 0.75·(−0.1) = 0.025; se² = 0.0625·0.04/4 + 0.5625·0.01/9 = 0.00125,
    se = 0.0354: |m| / se = 0.71 < 2 (dropped), though holder 1 alone has 0.4 / 0.1 = 4."""
    a = HolderStats(5, [f32(0.4)], [f32(0.2)], 4)
    b = HolderStats(15, [f32(-0.1)], [f32(0.1)], 9)
    assert feasible_mask([f32(1.0)], None, [a, b], 2.0)[0].tolist() == [False]
    assert feasible_mask([f32(1.0)], None, [a], 2.0)[0].tolist() == [True]
    assert feasible_mask([f32(1.0)], None, [a, b], 0.7)[0].tolist() == [True]


# -- around PUF's round, on mock replies ----------------------------------------------------------
G = [f32(1.0, -2.0, 0.5), f32(3.0)]
D = {0: [f32(0.1, 0.2, 0.3), f32(1.0)], 1: [f32(-0.4, 0.0, 0.2), f32(-2.0)], 2: [f32(0.5, 0.5, -0.5), f32(0.5)]}
DF2 = [f32(0.2, -0.1, 0.3), f32(-1.0)]  # client 2's forget update
MEAN2, STD2 = [f32(-0.5, 0.01, -0.2), f32(0.3)], [f32(0.1, 0.1, 0.1), f32(0.1)]  # 4 batches: se = 0.05


def masked_puf_round(mode):
    puf = PUFRound(PseudoGradientStore(), node_of={p: 100 + p for p in range(3)}, participants=[0, 1], seed=0,
                   targets=[2], eta=10.0, mode=mode, request=ForgetRequest([2], round=5))
    strategy = FeasibleUpdateMask(puf, z=2.0)
    sent = send(list(strategy.configure_train(5, ArrayRecord(G), ConfigRecord(), grid=None)))
    asked = {m.metadata.dst_node_id - 100: bool(m.content["config"].get("grad-stats", False)) for m in sent}
    replies = []
    for m in sent:
        pid = m.metadata.dst_node_id - 100
        delta = DF2 if pid == 2 else D[pid]
        reply = train_reply(pid, 30 if pid == 2 else 10 * (pid + 1), [g + d for g, d in zip(G, delta, strict=True)],
                            reply_to=m.metadata.message_id)
        if pid == 2:
            reply.content["grad-mean"], reply.content["grad-std"] = ArrayRecord(MEAN2), ArrayRecord(STD2)
            reply.content["metrics"] = MetricRecord({**dict(reply.content["metrics"]), "grad-batches": 4})
        replies.append(reply)
    arrays, _ = strategy.aggregate_train(5, replies)
    return arrays.to_numpy_ndarrays(), asked, strategy


def test_masked_puf_regular_by_hand():
    """N = 10 + 20 + 30: r = (10·D0 + 20·D1)/60 = [-0.1167, 0.0333, 0.1167 | -0.5], g = −10·30/60·DF2 =
    [-1, 0.5, -1.5 | 5]. Reliable: |m|/0.05 = [10, 0.2, 4 | 6] -> [T, F, T | T]; feasible: sign(g)·r =
    [0.117, 0.033, -0.117 | -0.5] -> [T, T, F | F]. Kept: coordinate 0 only."""
    got, asked, strategy = masked_puf_round("regular")
    assert asked == {0: False, 1: False, 2: True}  # only the forget update is asked for statistics
    r = [(10 * D[0][i] + 20 * D[1][i]) / 60 for i in range(2)]
    g = [-10 * 30 / 60 * DF2[i] for i in range(2)]
    mask = [np.array([True, False, False]), np.array([False])]
    for i in range(2):
        np.testing.assert_allclose(got[i], G[i] + r[i] + g[i] * mask[i], rtol=1e-6, atol=1e-6)
    assert strategy.kept == {"0": (1, 3), "1": (0, 1)} and strategy.feasibility_checked


def test_masked_puf_special_skips_the_feasibility_check():
    """Special form: g = −10·DF2 = [-2, 1, -3 | 10]; no r, so the reliable coordinates [T, F, T | T] stay."""
    got, asked, strategy = masked_puf_round("special")
    assert asked == {2: True} and not strategy.feasibility_checked
    np.testing.assert_allclose(got[0], G[0] + np.array([-2.0, 0.0, -3.0]), rtol=1e-6)
    np.testing.assert_allclose(got[1], G[1] + 10.0, rtol=1e-6)


def test_gradient_statistics_are_the_per_batch_mean_and_std():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(10, 4)).astype(np.float32), rng.integers(0, 3, 10)
    mean, std, b = batch_gradient_stats(model, x, y, batch_size=3, seed=7)
    assert b == 4  # ⌈10 / 3⌉
    order = torch.randperm(10, generator=torch.Generator().manual_seed(7)).split(3)
    grads = []
    for batch in order:
        model.zero_grad()
        nn.functional.cross_entropy(model(torch.from_numpy(x[batch.numpy()])), torch.from_numpy(y[batch.numpy()])).backward()
        grads.append([p.grad.numpy().copy() for p in model.parameters()])
    for i in range(2):
        stacked = np.stack([g[i] for g in grads])
        np.testing.assert_allclose(mean[i], stacked.mean(0), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(std[i], stacked.std(0, ddof=1), rtol=1e-4, atol=1e-7)
    assert batch_gradient_stats(model, x[:3], y[:3], batch_size=16, seed=0)[2] == 2  # one batch: split in two


# -- augmentation ---------------------------------------------------------------------------------
def test_augmentation_is_seeded_per_image_and_keeps_each_images_range():
    x = torch.from_numpy(np.random.default_rng(0).random((16, 1, 8, 8), dtype=np.float32))
    a = augmenter("trivial-augment-wide", 3)(x)
    assert torch.equal(a, augmenter("trivial-augment-wide", 3)(x))
    assert not torch.equal(a, augmenter("trivial-augment-wide", 4)(x))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert bool((a.amin((1, 2, 3)) >= x.amin((1, 2, 3)) - 1e-6).all() and (a.amax((1, 2, 3)) <= x.amax((1, 2, 3)) + 1e-6).all())
    changed = [(a[i] - x[i]).abs().max() > 2 / 255 for i in range(16)]
    assert 0 < sum(changed) < 16  # each image draws its own operation (some draw identity-like ones)
    with pytest.raises(ValueError, match="needs image batches"):
        augmenter("rand-augment", 0)(torch.zeros(4, 8))


def test_with_client_config_adds_its_keys_to_every_train_message():
    inner = PUFRound(PseudoGradientStore(), node_of={p: 100 + p for p in range(3)}, participants=[0, 1], seed=0,
                     targets=[2], eta=10.0)
    messages = list(WithClientConfig(inner, {"augment": "rand-augment"}).configure_train(
        1, ArrayRecord(G), ConfigRecord({"lr": 0.1}), grid=None))
    assert len(messages) == 3 and all(m.content["config"]["augment"] == "rand-augment" for m in messages)
    assert all(m.content["config"]["lr"] == 0.1 for m in messages)


# -- what is refused before training, and a tiny run ----------------------------------------------

@pytest.mark.parametrize(("strategies", "message"), [
    ("['natural+mask']", "forgetting.strategies: natural+mask has no first-order unlearning step to mask"),
    ("['puf+mask@offline=true']", "has no first-order unlearning step to mask"),
    ("['puf+mask@z=-1']", "forgetting.mask.z: must be >= 0"),
    ("['puf+augment@policy=\"flip\"']", "forgetting.augment.policy: must be one of"),
])
def test_masking_and_augmentation_are_refused_where_they_cannot_apply(strategies, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_comparison(load_experiment(DEFAULT, [*TINY, f"forgetting.strategies={strategies}"]))


def test_augmentation_of_vectors_is_refused_before_training():
    with pytest.raises(ConfigError, match=re.escape("puf+augment augments images (channels, height, width), and "
                                                    "data.name = 'synthetic' has inputs of shape (20,)")):
        check_comparison(load_experiment(DEFAULT, [*TINY, "data.name=synthetic", "data.backdoor.clients=[]",
                                                   "probe.metric=forget_acc", "forgetting.strategies=['puf+augment']"]))


def test_masked_and_augmented_strategies_run_and_report_what_they_kept(tmp_path):
    cfg = load_experiment(DEFAULT, [*TINY, "forgetting.strategies=['retrain', 'puf', 'puf+mask', 'pga+mask', "
                                           "'puf+mask+augment']", "probe.enabled=false", "train.local_epochs=1"])
    rows = compare(local_federation(4, log=lambda *_: None), cfg, tmp_path / "cmp", log=lambda *_: None)
    by = {r["strategy"]: r for r in rows}
    for name in ("puf+mask", "pga+mask", "puf+mask+augment"):
        kept = float(re.search(r"mask: z 2.0, kept ([\d.]+)% of", by[name]["notes"]).group(1))
        assert 0 < kept < 100, by[name]["notes"]
    assert "checked against the retained update" in by["puf+mask"]["notes"]
    assert "skipped (no retained update" in by["pga+mask"]["notes"]
    assert "augment: trivial-augment-wide" in by["puf+mask+augment"]["notes"]
    assert by["puf+mask+augment"]["test_acc"] != by["puf+mask"]["test_acc"]  # augmented recovery trained otherwise


def test_augmentation_and_layer_checks_work_with_client_rules():
    """The checks read the data set's shape, never the per-seed clients a rule names."""
    cfg = load_experiment(DEFAULT, [*TINY, 'forget=[{clients=["largest"]}]', 'data.backdoor.clients=["forgotten"]',
                                    "forgetting.strategies=['puf+augment', { strategy = 'not', layers = ['1.weight'] }]"])
    assert [s.label for s in check_comparison(cfg)][1:] == ["puf+augment", "not@layers=['1.weight']"]


@pytest.mark.parametrize(("strategies", "extra", "message"), [
    ("['fedrecovery+ieu@side=\"client\"']", ["store.history=true"],
     'fedrecovery+ieu@side="client" with side = "client" acts in recovery rounds, and the method it wraps runs none'),
    ("['puf+ieu@side=\"client\",rounds=2']", ["forgetting.recovery_rounds=1"],
     'with side = "client" needs 2 recovery round(s), and forgetting.recovery_rounds is 1'),
])
def test_client_side_ieu_is_refused_where_its_rounds_cannot_run(strategies, extra, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_comparison(load_experiment(DEFAULT, [*TINY, *extra, f"forgetting.strategies={strategies}"]))


def test_the_mask_refuses_a_round_where_a_holder_did_not_answer_with_statistics():
    puf = PUFRound(PseudoGradientStore(), node_of={p: 100 + p for p in range(3)}, participants=[0, 1], seed=0,
                   targets=[2], eta=10.0, request=ForgetRequest([2], round=5))
    strategy = FeasibleUpdateMask(puf)
    sent = send(list(strategy.configure_train(5, ArrayRecord(G), ConfigRecord(), grid=None)))
    replies = [train_reply(m.metadata.dst_node_id - 100, 10, G, reply_to=m.metadata.message_id) for m in sent]
    with pytest.raises(UnlearningError, match="1 of 1 holders of forget data answered the unlearning round with "
                                              "gradient statistics|0 of 1 holders"):
        strategy.aggregate_train(5, replies)
