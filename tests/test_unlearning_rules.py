"""Each unlearning update rule against values computed by hand on small tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord

from fedunlearn.clients.ascent import flat, project_to_ball
from fedunlearn.config import ExperimentConfig
from fedunlearn.store import PseudoGradientStore
from fedunlearn.strategies.fedavg import RecordingFedAvg
from fedunlearn.strategies.federaser import FedEraserCalibration, calibrated_step
from fedunlearn.strategies.ieu import IEUServerSide, ieu_perturb
from fedunlearn.strategies.puf import PUFRound
from tests.mocks import train_reply

G = [np.array([1.0, -2.0, 0.5], dtype=np.float32), np.array([[3.0]], dtype=np.float32)]
D = {  # pseudo-gradients per client
    0: [np.array([0.1, 0.2, 0.3], np.float32), np.array([[1.0]], np.float32)],
    1: [np.array([-0.4, 0.0, 0.2], np.float32), np.array([[-2.0]], np.float32)],
    2: [np.array([0.5, 0.5, -0.5], np.float32), np.array([[0.5]], np.float32)],
    3: [np.array([0.0, -1.0, 1.0], np.float32), np.array([[4.0]], np.float32)],
}
N = {0: 10, 1: 20, 2: 30, 3: 40}
CFG = ExperimentConfig()


def replies(pids):
    return [train_reply(p, N[p], [g + d for g, d in zip(G, D[p], strict=True)]) for p in pids]


def run_round(strategy, pids, rnd=5):
    list(strategy.configure_train(rnd, ArrayRecord(G), ConfigRecord(), grid=None))
    arrays, _ = strategy.aggregate_train(rnd, replies(pids))
    return arrays.to_numpy_ndarrays()


def puf(targets, mode, eta, offline=False, store=None):
    return PUFRound.from_config(CFG, store or PseudoGradientStore(), {p: 100 + p for p in range(4)}, [0, 1, 2, 3],
                                targets=targets, eta=eta, mode=mode, offline=offline)


def expected(terms):
    return [g + sum(c * d[i] for c, d in terms) for i, g in enumerate(G)]


def assert_weights(got, want):
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_puf_regular_one_target():
    s = puf([3], "regular", 20.0)
    assert s.sample(5) == [0, 1, 2, 3]
    got = run_round(s, [0, 1, 2, 3])
    total = 100.0  # N = Σ_R n_k + n_u
    assert_weights(got, expected([(10 / total, D[0]), (20 / total, D[1]), (30 / total, D[2]), (-20 * 40 / total, D[3])]))
    assert s.sources == {3: "fresh (round 5)"}


def test_puf_regular_two_concurrent_targets():
    got = run_round(puf([1, 3], "regular", 5.0), [0, 1, 2, 3])
    assert_weights(got, expected([(10 / 100, D[0]), (30 / 100, D[2]), (-5 * 20 / 100, D[1]), (-5 * 40 / 100, D[3])]))


def test_puf_special_only_targets_train():
    s = puf([1, 3], "special", 2.0)
    assert s.sample(5) == [1, 3]
    got = run_round(s, [1, 3])
    assert_weights(got, expected([(-2 * 20 / 60, D[1]), (-2 * 40 / 60, D[3])]))  # N_U = 60


def test_puf_offline_target_uses_its_stored_latest_delta():
    store = PseudoGradientStore()
    store.record(3, 4, 40, D[3])
    s = puf([3], "regular", 20.0, offline=True, store=store)
    assert s.sample(5) == [0, 1, 2]  # the target is not asked
    got = run_round(s, [0, 1, 2])
    assert_weights(got, expected([(10 / 100, D[0]), (20 / 100, D[1]), (30 / 100, D[2]), (-20 * 40 / 100, D[3])]))
    assert s.sources == {3: "stored (round 4)"}


def test_ieu_decay_alone_scales_every_tensor():
    out = ieu_perturb(G, decay=0.1, noise=0.0, rng=np.random.default_rng(0))
    assert_weights(out, [0.9 * g for g in G])


def test_ieu_noise_has_zero_mean_and_rms_scaled_spread():
    rng = np.random.default_rng(0)
    w = [rng.normal(0, 3.0, size=200_000).astype(np.float32), rng.normal(0, 0.01, size=(400, 500)).astype(np.float32)]
    out = ieu_perturb(w, decay=0.0, noise=0.1, rng=np.random.default_rng(1))
    for before, after in zip(w, out, strict=True):
        added = (after - before).astype(np.float64)
        rms = np.sqrt(np.mean(before.astype(np.float64) ** 2))
        assert abs(added.mean()) < 0.01 * 0.1 * rms
        assert added.std() == pytest.approx(0.1 * rms, rel=0.01)
    again = ieu_perturb(w, decay=0.0, noise=0.1, rng=np.random.default_rng(1))
    assert all(np.array_equal(a, b) for a, b in zip(out, again, strict=True))  # seeded


def test_ieu_wrapper_perturbs_the_inner_aggregate():
    inner = RecordingFedAvg.from_config(CFG, PseudoGradientStore(), {p: 100 + p for p in range(4)}, [0, 1])
    wrapped = IEUServerSide(inner, decay=0.5, noise=0.0, seed=0)
    got = run_round(wrapped, [0, 1])
    plain = expected([(10 / 30, D[0]), (20 / 30, D[1])])
    assert_weights(got, [0.5 * w for w in plain])
    assert wrapped.report.succeeded == [0, 1]


def test_pga_projection_never_leaves_the_ball():
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    center = flat(model.parameters()).detach().clone()
    radius = 0.3
    for _ in range(50):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.2)
        project_to_ball(model, center, radius)
        assert float((flat(model.parameters()).detach() - center).norm()) <= radius * (1 + 1e-5)
    inside = flat(model.parameters()).detach().clone()
    project_to_ball(model, center, radius)  # a point inside stays where it is
    assert torch.equal(inside, flat(model.parameters()))


def test_federaser_calibration_step_by_hand():
    old = [(10, D[0]), (30, D[2])]
    new = [(10, D[1]), (30, D[3])]
    step = calibrated_step(old, new)
    for i in range(2):
        u_old = (10 * D[0][i] + 30 * D[2][i]) / 40
        u_new = (10 * D[1][i] + 30 * D[3][i]) / 40
        np.testing.assert_allclose(step[i], np.linalg.norm(u_old) * u_new / np.linalg.norm(u_new), rtol=1e-5)
        assert np.linalg.norm(step[i]) == pytest.approx(np.linalg.norm(u_old), rel=1e-5)


def test_federaser_round_applies_the_calibrated_step():
    store = PseudoGradientStore()
    for p in (0, 2):
        store.record(p, 1, N[p], D[p])
    old = {p: store.latest(p) for p in (0, 2)}
    s = FedEraserCalibration.from_config(CFG, PseudoGradientStore(), {p: 100 + p for p in range(4)}, [0, 2],
                                         old_updates=old, calibration_epochs=1)
    messages = list(s.configure_train(3, ArrayRecord(G), ConfigRecord(), grid=None))
    assert all(m.content["config"]["local-epochs"] == 1 for m in messages)
    # The calibration updates of clients 0 and 2 are D[1] and D[3] here.
    arrays, _ = s.aggregate_train(3, [train_reply(0, 10, [g + d for g, d in zip(G, D[1], strict=True)]),
                                      train_reply(2, 30, [g + d for g, d in zip(G, D[3], strict=True)])])
    step = calibrated_step([(10, D[0]), (30, D[2])], [(10, D[1]), (30, D[3])])
    assert_weights(arrays.to_numpy_ndarrays(), [g + s_ for g, s_ in zip(G, step, strict=True)])
