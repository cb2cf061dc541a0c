"""Dilution: a fixed sparsity mask on the weight matrices (docs/methods.md, "Dilution").

The masks by hand; a diluted model's pruned weights at exactly 0 after local training,
aggregation, PUF's round and IEU's server-side step; the refusals and the settings record; and
comparisons (early and late) on the in-process grid in which every model keeps its mask and every
client reply honours it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tomllib
import torch
from flwr.app import ArrayRecord, ConfigRecord
from torch import nn

from fedunlearn.clients.request import ClientRequest
from fedunlearn.clients.train import train_behaviour
from fedunlearn.config import (
    ConfigError,
    DilutionConfig,
    ForgetRequest,
    config_from_dict,
    config_to_dict,
    load_config,
    to_toml,
)
from fedunlearn.data import ClientData
from fedunlearn.dilution import (
    MASK_RECORD,
    Schedule,
    apply,
    attach,
    diluted,
    early_mask,
    late_mask,
    load_mask,
    mask_file,
)
from fedunlearn.flower.client_app import app as client_app
from fedunlearn.flower.runtime import Federation
from fedunlearn.models import build_model, model_part
from fedunlearn.parts import check_parts, load_experiment
from fedunlearn.phases.compare import compare
from fedunlearn.phases.forget import Snapshot, Timeline
from fedunlearn.provenance import fingerprint, training_settings
from fedunlearn.results import RunDir
from fedunlearn.store import PseudoGradientStore
from fedunlearn.strategies import RecordingFedAvg, Unlearner
from fedunlearn.strategies.dilution import Diluted
from fedunlearn.strategies.ieu import IEU, IEUServerSide, IEUSettings
from fedunlearn.strategies.puf import PUFRound
from fedunlearn.training import get_weights, train_local
from tests.conftest import ROOT
from tests.local_grid import LocalGrid
from tests.mocks import send, train_reply

DEFAULT = ROOT / "experiments/default.toml"
SHAPES = [(4, 3), (4,), (2, 3, 3, 3), (2,), (5, 6)]  # a matrix, a bias, a conv kernel, a bias, a matrix


def weights_of(shapes=SHAPES, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=s).astype(np.float32) for s in shapes]


def assert_held(weights, mask) -> None:
    """Every pruned coordinate is exactly 0."""
    for w, m in zip(weights, mask, strict=True):
        assert np.all(np.asarray(w)[~m] == 0)


# -- the masks, by hand ----------------------------------------------------------------------------
def test_early_mask_prunes_round_s_n_of_every_weight_matrix_and_no_bias():
    w = weights_of()
    mask = early_mask(w, 0.3, seed=5)
    assert [m.shape for m in mask] == SHAPES and all(m.dtype == bool for m in mask)
    assert diluted(w) == [True, False, True, False, True]
    assert [int((~m).sum()) for m in mask] == [round(0.3 * 12), 0, round(0.3 * 54), 0, round(0.3 * 30)]
    assert all(np.array_equal(a, b) for a, b in zip(mask, early_mask(weights_of(seed=1), 0.3, seed=5), strict=True))
    assert not np.array_equal(mask[0], early_mask(w, 0.3, seed=6)[0])  # seeded by the experiment seed
    assert all(m.all() for m in early_mask(w, 0.0, seed=5))  # sparsity 0: dense


def test_early_mask_is_a_uniform_choice():
    pruned = sum((~early_mask([np.zeros((4, 3))], 0.5, seed)[0]).astype(int) for seed in range(800))
    assert pruned.sum() == 800 * 6
    np.testing.assert_allclose(pruned / 800, 0.5, atol=0.07)  # every coordinate about as often (sd ≈ 0.018)


def test_late_mask_prunes_the_smallest_magnitudes_ties_to_the_lower_index():
    w = [np.array([[3.0, -1.0, 1.0], [0.5, -2.0, 1.0]], np.float32), np.array([0.0, 0.1], np.float32)]
    mask = late_mask(w, 0.5)
    # |w| = 3, 1, 1, 0.5, 2, 1: three pruned, 0.5 (index 3) then the first two of the three 1s (indices 1, 2)
    assert mask[0].tolist() == [[True, False, False], [False, True, True]]
    assert mask[1].all()  # a bias is never pruned, even where it is 0
    big = weights_of(seed=2)
    for w_, m in zip(big, late_mask(big, 0.4), strict=True):
        if w_.ndim >= 2:
            assert int((~m).sum()) == round(0.4 * w_.size)
            assert np.abs(w_[~m]).max() <= np.abs(w_[m]).min()


def test_apply_sets_pruned_coordinates_to_exactly_zero_and_keeps_the_rest():
    w = [np.array([[np.nan, 2.0], [np.inf, -3.0]], np.float64), np.array([1.0, 2.0], np.float32)]
    mask = [np.array([[False, True], [False, True]]), np.ones(2, bool)]
    out = apply(w, mask)
    assert out[0].dtype == np.float64 and out[0].tolist() == [[0.0, 2.0], [0.0, -3.0]]
    assert np.array_equal(out[1], w[1]) and np.isnan(w[0][0, 0])  # the input is left alone


def test_an_early_diluted_model_is_built_with_its_mask_applied():
    cfg = load_config(None, ["model.name=mlp", "model.mlp.hidden=8", "model.dilution.sparsity=0.8"])
    diluted_model = get_weights(build_model(cfg.model, (1, 8, 8), 10, seed=3))
    dense = get_weights(build_model(load_config(None, ["model.name=mlp", "model.mlp.hidden=8"]).model, (1, 8, 8), 10, 3))
    mask = early_mask(dense, 0.8, seed=3)
    assert_held(diluted_model, mask)
    assert all(np.array_equal(a[m], b[m]) for a, b, m in zip(diluted_model, dense, mask, strict=True))


# -- settings --------------------------------------------------------------------------------------
def test_the_dilution_table_is_not_a_model_settings_table():
    cfg = load_config(None, ["model.name=mlp", "model.mlp.hidden=8", "model.dilution.sparsity=0.5",
                             "model.dilution.mode='late'", "model.dilution.finetune_rounds=2"])
    assert cfg.model.dilution == DilutionConfig(0.5, "late", 2) and set(cfg.model.settings) == {"mlp"}
    model_part(cfg.model)  # [model.mlp] is checked; [model.dilution] is not taken for a model's table
    again = config_from_dict(tomllib.loads(to_toml(config_to_dict(cfg))))
    assert again.model == cfg.model


@pytest.mark.parametrize(("overrides", "field", "fix"), [
    (["model.dilution.sparsity=1.0"], "model.dilution.sparsity", "must be in [0, 1) (got 1.0)"),
    (["model.dilution.sparsity=-0.1"], "model.dilution.sparsity", "must be in [0, 1)"),
    (["model.dilution.mode='middle'"], "model.dilution.mode", "must be 'early'"),
    (["model.dilution.finetune_rounds=-1"], "model.dilution.finetune_rounds", "must be >= 0"),
    (["model.dilution.sparsity=0.5", "model.dilution.mode='late'", "model.dilution.finetune_rounds=30"],
     "model.dilution.finetune_rounds", "must be < train.rounds = 30"),
    (["model.dilution.density=0.5"], "model.dilution.density", "unknown key"),
])
def test_bad_settings_are_refused_in_one_line_naming_the_field(overrides, field, fix):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert str(err.value).startswith(f"{field}: ") and fix in str(err.value) and "\n" not in str(err.value)


def test_a_request_before_the_late_pruning_round_is_refused():
    late = [*TINY, "train.rounds=4", "model.dilution.sparsity=0.5", "model.dilution.mode='late'",
            "model.dilution.finetune_rounds=2"]
    with pytest.raises(ConfigError, match=r"^forget\[0\].round: 1 comes before round 2, after which model.dilution"):
        check_parts(load_experiment(DEFAULT, [*late, "forget=[{clients=[1], round=1}]"]))
    check_parts(load_experiment(DEFAULT, [*late, "forget=[{clients=[1], round=2}]"]))  # at the pruning round
    check_parts(load_experiment(DEFAULT, [*TINY, "model.dilution.sparsity=0.5", "forget=[{clients=[1], round=1}]"]))


def test_the_dilution_settings_are_in_the_training_record_only_when_diluted():
    def record(*overrides):
        return training_settings(load_config(DEFAULT, list(overrides)))

    assert "dilution" not in record()["model"]  # a dense run's record stays as it was before the setting
    assert record("model.dilution.sparsity=0.8")["model"]["dilution"] == {"sparsity": 0.8, "mode": "early"}
    assert fingerprint(record("model.dilution.sparsity=0.8")) != fingerprint(record("model.dilution.sparsity=0.5"))
    assert fingerprint(record("model.dilution.sparsity=0.8")) == fingerprint(record("model.dilution.sparsity=0.8",
                                                                                     "train.rounds=40"))
    late = ["model.dilution.sparsity=0.8", "model.dilution.mode='late'"]
    assert record(*late, "model.dilution.finetune_rounds=5")["model"]["dilution"]["prune_round"] == 25
    # a longer late run prunes later (trained again), unless the fine-tuning grows with it
    assert fingerprint(record(*late, "train.rounds=40")) != fingerprint(record(*late))
    assert fingerprint(record(*late, "train.rounds=40", "model.dilution.finetune_rounds=10")) == fingerprint(
        record(*late))


# -- the server's schedule -------------------------------------------------------------------------
def test_a_late_schedule_prunes_after_its_round_saves_the_mask_and_a_resumed_run_reads_it(tmp_path):
    cfg = load_config(None, ["model.dilution.sparsity=0.5", "model.dilution.mode='late'",
                             "model.dilution.finetune_rounds=2", "train.rounds=5"])
    w, lines = weights_of(), []
    schedule = Schedule.for_training(cfg, tmp_path, w, start=0, log=lines.append)
    assert schedule.mask is None and schedule.prune_round == 3
    assert all(np.array_equal(a, b) for a, b in zip(schedule.after_round(w, 2), w, strict=True))  # dense before
    assert not mask_file(tmp_path).exists()
    pruned = schedule.after_round(w, 3)
    want = late_mask(w, 0.5)
    assert all(np.array_equal(a, b) for a, b in zip(schedule.mask, want, strict=True))
    assert_held(pruned, want)
    assert "after round 3" in lines[0] and "2 fine-tuning round(s) follow" in lines[0]
    resumed = Schedule.for_training(cfg, tmp_path, weights_of(seed=9), start=4)
    assert all(np.array_equal(a, b) for a, b in zip(resumed.mask, want, strict=True))
    assert Schedule.for_training(cfg, tmp_path, w, start=2).mask is None  # resumed before the pruning: made again
    mask_file(tmp_path).unlink()
    with pytest.raises(ConfigError, match=r"^model.dilution: .*dilution_mask.npz is missing"):
        Schedule.for_training(cfg, tmp_path, w, start=4)


def test_an_early_schedule_has_the_seeds_mask_from_the_start(tmp_path):
    cfg = load_config(None, ["model.dilution.sparsity=0.7", "seed=4"])
    schedule = Schedule.for_training(cfg, tmp_path, weights_of(), start=0)
    want = early_mask(weights_of(), 0.7, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(schedule.mask, want, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(load_mask(tmp_path), want, strict=True))
    assert Schedule.for_training(load_config(None), tmp_path / "dense", weights_of(), start=0).mask is None


# -- local training --------------------------------------------------------------------------------
X = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
Y = (np.arange(40) % 3).astype(np.int64)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


@pytest.mark.parametrize("config", [
    {"local-epochs": 2, "batch-size": 8, "lr": 0.5, "momentum": 0.9},
    {"local-epochs": 1, "batch-size": 8, "lr": 0.5, "momentum": 0.0, "ieu-decay": 0.1, "ieu-noise": 0.5},
], ids=["sgd-momentum", "ieu-client-side"])
def test_local_training_keeps_the_pruned_weights_at_zero(config):
    model = tiny_model()
    w0 = get_weights(model)
    mask = early_mask(w0, 0.6, seed=1)
    attach(model, mask)  # as the ClientApp does with the mask a message brings
    train_behaviour(model, ClientData(X, Y, np.zeros(0, dtype=np.int64)), ClientRequest(config, 3))
    w = get_weights(model)
    assert_held(w, mask)
    assert not np.allclose(w[0][mask[0]], w0[0][mask[0]])  # the kept weights trained
    attach(model, None)  # detached: training is dense again
    train_behaviour(model, ClientData(X, Y, np.zeros(0, dtype=np.int64)), ClientRequest(config, 4))
    assert np.all(get_weights(model)[0][~mask[0]] != 0)


def test_every_local_step_sees_the_mask_held():
    model = tiny_model()
    mask = late_mask(get_weights(model), 0.5)
    attach(model, mask)
    seen = []

    def after_step(m: nn.Module) -> bool:  # a behaviour's own hook (PGA's projection) sees diluted weights
        seen.append(all(np.all(w[~k] == 0) for w, k in zip(get_weights(m), mask, strict=True)))
        return False

    res = train_local(model, X, Y, epochs=1, batch_size=8, lr=0.5, momentum=0.9, ascent=True, after_step=after_step)
    assert res.steps == 5 and seen == [True] * 5
    assert_held(get_weights(model), mask)


# -- aggregation, PUF, IEU -------------------------------------------------------------------------
NODE_OF = {p: 100 + p for p in range(4)}
GLOBAL = weights_of(seed=11)
MASK = early_mask(GLOBAL, 0.5, seed=0)


def answer(strategy, rnd: int = 5) -> tuple[list[np.ndarray], list]:
    """One round against mock clients that ignore the mask (each reply dense); the new weights and the messages."""
    sent = send(list(strategy.configure_train(rnd, ArrayRecord(GLOBAL), ConfigRecord(), grid=None)))
    replies = []
    for m in sent:
        pid = m.metadata.dst_node_id - 100
        rng = np.random.default_rng([pid, "only" in m.content["config"]])
        replies.append(train_reply(pid, 10 + pid, [g + rng.normal(size=g.shape).astype(np.float32) for g in GLOBAL],
                                   reply_to=m.metadata.message_id))
    arrays, _ = strategy.aggregate_train(rnd, replies)
    return arrays.to_numpy_ndarrays(), sent


def test_aggregation_keeps_the_pruned_weights_at_zero_and_the_kept_ones_as_fedavg_has_them():
    store = PseudoGradientStore(keep_history=True)
    inner = RecordingFedAvg(store, node_of=NODE_OF, participants=range(4), seed=0)
    got, sent = answer(Diluted(inner, MASK))
    assert_held(got, MASK)
    for m in sent:  # the mask travels with the (masked) weights
        assert all(np.array_equal(a, b) for a, b in zip(m.content[MASK_RECORD].to_numpy_ndarrays(), MASK, strict=True))
        assert_held(m.content["arrays"].to_numpy_ndarrays(), MASK)
    plain = RecordingFedAvg(PseudoGradientStore(), node_of=NODE_OF, participants=range(4), seed=0)
    dense, _ = answer(plain)
    for a, b, m in zip(got, dense, MASK, strict=True):
        np.testing.assert_allclose(a[m], b[m], rtol=1e-6, atol=1e-6)
    for pid in range(4):  # pruned coordinates have zero pseudo-gradient in the store
        assert_held(store.get(pid, 5).delta, MASK)
    assert inner.report.bytes_exchanged == plain.report.bytes_exchanged  # the mask is not model bytes


def puf_round(eta: float = 20.0) -> PUFRound:
    request = ForgetRequest([3], round=5)
    return PUFRound.from_config(load_config(None), PseudoGradientStore(), NODE_OF, [0, 1, 2], [request], targets=[3],
                                eta=eta, mode="regular", offline=False, request=request, earlier=[])


def test_puf_round_keeps_the_pruned_weights_at_zero():
    plain, _ = answer(puf_round())
    assert any(np.any(w[~m] != 0) for w, m in zip(plain, MASK, strict=True))  # the step itself fills them
    got, sent = answer(Diluted(puf_round(), MASK))
    assert {m.metadata.dst_node_id - 100 for m in sent} == {0, 1, 2, 3}
    assert_held(got, MASK)
    for a, b, m in zip(got, plain, MASK, strict=True):
        np.testing.assert_allclose(a[m], b[m], rtol=1e-5, atol=1e-5)


def test_ieu_in_a_round_keeps_the_pruned_weights_at_zero():
    got, _ = answer(Diluted(IEUServerSide(puf_round(), decay=0.5, noise=0.5, seed=0), MASK))
    assert_held(got, MASK)


class Keep(Unlearner):
    """A step that returns the model as it is (IEU's server side then perturbs every coordinate)."""

    def unlearn(self, ctx):
        return [w.copy() for w in ctx.weights]


def test_ieu_server_side_step_keeps_the_pruned_weights_at_zero():
    """IEU's server-side step is made outside any round: the timeline's unlearning step masks it."""
    cfg = load_config(None, ["model.dilution.sparsity=0.5", "train.rounds=2", "forget=[{clients=[0]}]",
                             "forgetting.recovery_rounds=0"])
    start = apply(GLOBAL, MASK)
    unlearner = IEU(Keep(), IEUSettings(decay=0.5, noise=0.5))
    ctx = SimpleNamespace(weights=start, init_weights=GLOBAL, cfg=cfg, clock=2, notes={})
    assert any(np.any(w[~m] != 0) for w, m in zip(unlearner.unlearn(ctx), MASK, strict=True))  # alone, it fills them
    spec = SimpleNamespace(build=lambda: unlearner, label="keep+ieu", spec="keep+ieu", from_scratch=False,
                           describe_step=lambda u: "")
    snapshot = Snapshot(start, 2, PseudoGradientStore(), PseudoGradientStore(), GLOBAL, MASK)
    timeline = Timeline(None, cfg, spec, snapshot, SimpleNamespace(num_arrays=len(GLOBAL)), PseudoGradientStore(),
                        log=lambda *_: None)
    timeline.context = lambda weights, clock, request, removed: SimpleNamespace(
        weights=weights, init_weights=GLOBAL, cfg=cfg, clock=clock, notes={})
    got = timeline.run().weights
    assert_held(got, MASK)
    assert not all(np.array_equal(a, b) for a, b in zip(got, start, strict=True))  # the step did happen


# -- comparisons on the in-process grid ------------------------------------------------------------
TINY = ["data.num_clients=4", "data.partition=iid", "model.name=mlp", "model.mlp.hidden=32", "train.rounds=3",
        "train.batch_size=16", "store.history=false", "forgetting.recovery_rounds=1", "forgetting.natural.rounds=1",
        "forgetting.min_original_test_acc=0", "forgetting.min_original_backdoor_asr=0",
        "forgetting.min_original_forget_acc=0", "forgetting.check_separation=false", "data.backdoor.clients=[1]",
        "forget=[{clients=[1]}]", "forgetting.strategies=['retrain', 'puf']"]


class CheckedApp:
    """fedunlearn's ClientApp, each train reply checked: a message that brings a mask gets weights back with it held."""

    def __init__(self) -> None:
        self.checked: Counter = Counter()

    def __call__(self, msg, context):
        record = msg.content.array_records.get(MASK_RECORD)
        reply = client_app(msg, context)
        if record is not None and not reply.has_error():
            assert_held(reply.content["arrays"].to_numpy_ndarrays(), record.to_numpy_ndarrays())
            self.checked[msg.metadata.message_type] += 1
        return reply


def model_folders(seed_dir: Path) -> dict[str, Path]:
    return {"original": seed_dir / "train", **{p.name: p for p in (seed_dir / "strategies").iterdir()}}


@pytest.mark.parametrize("mode", ["early", "late"])
def test_every_model_of_a_diluted_comparison_keeps_its_mask(mode, tmp_path):
    late = ["model.dilution.mode='late'", "model.dilution.finetune_rounds=1"] if mode == "late" else []
    cfg = load_experiment(DEFAULT, [*TINY, "model.dilution.sparsity=0.8", *late, "probe.max_rounds=1",
                                    "probe.modes=['all', 'alone']", "probe.alone_max_steps=2",
                                    "forgetting.strategies=['retrain', 'puf', 'puf+ieu', 'pga']"])
    app = CheckedApp()
    compare(Federation(LocalGrid(4, app=app), 4), cfg, tmp_path / "cmp", log=lambda *_: None)
    folders = model_folders(tmp_path / "cmp" / "seed-0")
    assert set(folders) == {"original", "retrain", "puf", "puf+ieu", "pga"}
    train_mask = load_mask(folders["original"])
    for m, d in zip(train_mask, diluted(train_mask), strict=True):
        assert int((~m).sum()) == (round(0.8 * m.size) if d else 0)  # the sparsity asked, no bias pruned
    for name, folder in folders.items():
        weights, _ = RunDir(folder).load_checkpoint()
        mask = load_mask(folder)
        assert_held(weights, mask)
        same = all(np.array_equal(a, b) for a, b in zip(mask, train_mask, strict=True))
        assert same == (name != "retrain" or mode == "early")  # a late retrain prunes its own weights
    latest = PseudoGradientStore.load(folders["original"] / "store")
    for pid in latest.clients():  # the last round ran with the mask: zero pseudo-gradient where pruned
        assert_held(latest.latest(pid).delta, train_mask)
    assert app.checked["train"] > 0 and app.checked["train.probe"] > 0 and app.checked["train.ascent"] > 0


# -- `fedunlearn run` on the Simulation Engine -----------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["early", "late"])
def test_fedunlearn_run_keeps_every_models_mask(mode, tmp_path):
    from fedunlearn.cli import main

    late = ["model.dilution.mode='late'", "model.dilution.finetune_rounds=1"] if mode == "late" else []
    overrides = [*TINY, "model.dilution.sparsity=0.8", *late, "probe.max_rounds=1",
                 "forgetting.strategies=['retrain', 'puf', 'puf+ieu']"]
    out = tmp_path / "run"
    assert main(["run", str(DEFAULT), *[a for o in overrides for a in ("--set", o)], "--out", str(out)]) == 0
    folders = model_folders(out / "seed-0")
    train_mask = load_mask(folders["original"])
    for m, d in zip(train_mask, diluted(train_mask), strict=True):
        assert int((~m).sum()) == (round(0.8 * m.size) if d else 0)
    for name in ("original", "puf", "puf+ieu"):
        weights, _ = RunDir(folders[name]).load_checkpoint()
        assert_held(weights, train_mask)
        for w, m, d in zip(weights, train_mask, diluted(weights), strict=True):
            if d:
                assert np.count_nonzero(w) <= m.sum() and np.count_nonzero(w[m]) > 0.99 * m.sum()
    retrain, _ = RunDir(folders["retrain"]).load_checkpoint()
    assert_held(retrain, load_mask(folders["retrain"]))
