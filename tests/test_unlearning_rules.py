"""Each unlearning update rule against values computed by hand on small tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord

from fedunlearn.clients.ascent import flat, project_to_ball
from fedunlearn.config import ExperimentConfig, ForgetRequest
from fedunlearn.store import PseudoGradientStore
from fedunlearn.strategies.fedavg import RecordingFedAvg
from fedunlearn.strategies.federaser import FedEraserCalibration, calibrated_step
from fedunlearn.strategies.ieu import IEUServerSide, ieu_perturb
from fedunlearn.strategies.puf import PUFRound
from tests.mocks import send, train_reply

G = [np.array([1.0, -2.0, 0.5], dtype=np.float32), np.array([[3.0]], dtype=np.float32)]
D = {  # pseudo-gradients per client
    0: [np.array([0.1, 0.2, 0.3], np.float32), np.array([[1.0]], np.float32)],
    1: [np.array([-0.4, 0.0, 0.2], np.float32), np.array([[-2.0]], np.float32)],
    2: [np.array([0.5, 0.5, -0.5], np.float32), np.array([[0.5]], np.float32)],
    3: [np.array([0.0, -1.0, 1.0], np.float32), np.array([[4.0]], np.float32)],
}
N = {0: 10, 1: 20, 2: 30, 3: 40}
CFG = ExperimentConfig()


DF = {  # pseudo-gradients on the forget samples alone (generalised PUF)
    1: [np.array([1.0, 0.0, -1.0], np.float32), np.array([[2.0]], np.float32)],
    3: [np.array([0.2, 0.4, 0.0], np.float32), np.array([[-1.0]], np.float32)],
}
NF = {1: 5, 3: 8}  # |F_k|


def replies(pids):
    return [train_reply(p, N[p], [g + d for g, d in zip(G, D[p], strict=True)]) for p in pids]


def run_round(strategy, pids, rnd=5):
    list(strategy.configure_train(rnd, ArrayRecord(G), ConfigRecord(), grid=None))
    arrays, _ = strategy.aggregate_train(rnd, replies(pids))
    return arrays.to_numpy_ndarrays()


def answer(strategy, rnd=5, forget_n=None):
    """Run one round of ``strategy`` against mock clients: a regular reply sends D[p] with N[p]
    samples, a reply to a message that restricts the client to forget samples (``only``) sends
    DF[p] with ``forget_n[p]`` samples. Returns the new weights and the (pid, role) asked."""
    sent = send(list(strategy.configure_train(rnd, ArrayRecord(G), ConfigRecord(), grid=None)))
    out, asked = [], []
    for m in sent:
        pid = m.metadata.dst_node_id - 100
        forget = "only" in m.content["config"]
        delta, n = (DF[pid], (forget_n or NF)[pid]) if forget else (D[pid], N[pid])
        out.append(train_reply(pid, n, [g + d for g, d in zip(G, delta, strict=True)], reply_to=m.metadata.message_id))
        asked.append((pid, "forget" if forget else "regular"))
    arrays, _ = strategy.aggregate_train(rnd, out)
    return arrays.to_numpy_ndarrays(), asked


def puf(targets, mode, eta, offline=False, store=None, request=None, participants=None):
    request = request or ForgetRequest(list(targets), round=5)
    remaining = participants if participants is not None else [p for p in range(4) if p not in targets]
    return PUFRound.from_config(CFG, store or PseudoGradientStore(), {p: 100 + p for p in range(4)}, remaining,
                                [request], targets=targets, eta=eta, mode=mode, offline=offline, request=request,
                                earlier=[])


def expected(terms):
    return [g + sum(c * d[i] for c, d in terms) for i, g in enumerate(G)]


def assert_weights(got, want):
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_puf_regular_one_target():
    s = puf([3], "regular", 20.0)
    got, asked = answer(s, forget_n={3: 40})  # a client request: the target's forget data is all its data
    assert asked == [(0, "regular"), (1, "regular"), (2, "regular"), (3, "forget")]
    total = 100.0  # N = Σ_R n_k + n_u
    want = [(10 / total, D[0]), (20 / total, D[1]), (30 / total, D[2]), (-20 * 40 / total, DF[3])]
    assert_weights(got, expected(want))
    assert s.sources == {3: "fresh (round 5)"}


def test_puf_regular_two_concurrent_targets():
    got, _ = answer(puf([1, 3], "regular", 5.0), forget_n={1: 20, 3: 40})
    assert_weights(got, expected([(10 / 100, D[0]), (30 / 100, D[2]), (-5 * 20 / 100, DF[1]), (-5 * 40 / 100, DF[3])]))


def test_puf_special_only_targets_train():
    s = puf([1, 3], "special", 2.0)
    got, asked = answer(s, forget_n={1: 20, 3: 40})
    assert asked == [(1, "forget"), (3, "forget")]
    assert_weights(got, expected([(-2 * 20 / 60, DF[1]), (-2 * 40 / 60, DF[3])]))  # N_U = 60


def test_puf_offline_target_uses_its_stored_latest_delta():
    store = PseudoGradientStore()
    store.record(3, 4, 40, D[3])
    s = puf([3], "regular", 20.0, offline=True, store=store)
    got, asked = answer(s)
    assert asked == [(0, "regular"), (1, "regular"), (2, "regular")]  # the target is not asked
    assert_weights(got, expected([(10 / 100, D[0]), (20 / 100, D[1]), (30 / 100, D[2]), (-20 * 40 / 100, D[3])]))
    assert s.sources == {3: "stored (round 4)"}


def test_generalised_puf_regular_on_samples_by_hand():
    """Client 3 forgets 8 of its samples and stays: it sends Δ^R (D[3], its 40 remaining samples)
    and Δ^F (DF[3], its 8 forget samples). N = 10 + 20 + 30 + 40 + 8 = 108."""
    request = ForgetRequest([3], samples="poisoned", round=5)
    s = puf([3], "regular", 20.0, request=request, participants=[0, 1, 2, 3])
    got, asked = answer(s)
    assert asked == [(0, "regular"), (1, "regular"), (2, "regular"), (3, "regular"), (3, "forget")]
    w0 = G[0] + (10 * D[0][0] + 20 * D[1][0] + 30 * D[2][0] + 40 * D[3][0] - 20 * 8 * DF[3][0]) / 108
    # by hand, first tensor: [1, -2, 0.5] + ([1-8+15+0-32, 2+0+15-40-64, 3+4-15+40+0] / 108)
    np.testing.assert_allclose(w0, np.array([1 - 24 / 108, -2 - 87 / 108, 0.5 + 32 / 108]), rtol=1e-6)
    assert_weights(got, [w0, G[1] + (10 * 1 - 20 * 2 + 30 * 0.5 + 40 * 4 + 20 * 8 * 1) / 108])
    assert s.sources == {3: "fresh (round 5)"}


def test_generalised_puf_special_on_a_class_by_hand():
    """Clients 1 and 3 hold the forget class (5 and 8 samples): w − η Σ (|F_k|/N_F) Δ_k^F, N_F = 13."""
    request = ForgetRequest(classes=[7], round=5)
    s = puf([1, 3], "special", 2.0, request=request, participants=[0, 1, 2, 3])
    got, asked = answer(s)
    assert asked == [(1, "forget"), (3, "forget")]
    assert_weights(got, [G[0] - 2 * (5 * DF[1][0] + 8 * DF[3][0]) / 13,
                         np.array([[3.0 - 2 * (5 * 2.0 + 8 * -1.0) / 13]], np.float32)])


def test_forget_messages_carry_the_request_and_regular_ones_exclude_it():
    import json

    request = ForgetRequest([3], samples=0.25, round=5)
    s = puf([3], "regular", 20.0, request=request, participants=[0, 1, 2, 3])
    sent = send(list(s.configure_train(5, ArrayRecord(G), ConfigRecord(), grid=None)))
    for m in sent:
        config = m.content["config"]
        if "only" in config:
            assert json.loads(config["only"])[0]["samples"] == 0.25 and json.loads(config["exclude"]) == []
        else:
            assert json.loads(config["exclude"])[0]["clients"] == [3]


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
