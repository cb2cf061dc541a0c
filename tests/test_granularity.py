"""Forgetting at every granularity: a client, some of a client's samples, a class.

Hand-computed checks of the forget sets, the output filter, the TRW target, class similarity and
MIA-NN; refusals of what cannot run; and comparisons of each kind end to end on the in-process grid.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from fedunlearn.class_unlearning import (
    apply_filter,
    class_similarity,
    filter_matrix,
    filtered_logits,
    nearest_classes,
    trw_target,
)
from fedunlearn.cli import main
from fedunlearn.config import ConfigError, ForgetRequest, request_from_flags
from fedunlearn.data import federated_data
from fedunlearn.data.forget_sets import ForgetSets, forget_indices, kept_indices
from fedunlearn.evaluation.mia import neighbour_mia
from fedunlearn.parts import load_experiment
from fedunlearn.phases.compare import check_comparison, compare
from fedunlearn.results import RunDir, read_csv
from tests.conftest import ROOT
from tests.local_grid import LocalGrid, local_federation

DEFAULT = ROOT / "experiments/default.toml"
TINY = ["data.num_clients=4", "data.partition=iid", "model.name=mlp", "model.mlp.hidden=32", "train.rounds=3",
        "train.batch_size=16", "store.history=false", "forgetting.recovery_rounds=1", "forgetting.natural.rounds=1",
        "forgetting.min_original_test_acc=0", "forgetting.min_original_backdoor_asr=0",
        "forgetting.min_original_forget_acc=0", "forgetting.check_separation=false", "probe.max_rounds=1",
        "probe.modes=['all']", "data.backdoor.clients=[1]", "forget=[{clients=[1]}]",
        "forgetting.strategies=['retrain', 'natural', 'puf']"]


def tiny(*extra: str):
    return load_experiment(DEFAULT, [*TINY, *extra])


# -- forget sets ------------------------------------------------------------------------------
LABELS = np.array([3, 1, 3, 0, 2, 3, 1, 0])
POISONED = np.array([1, 4])


@pytest.mark.parametrize(("request_", "pid", "want"), [
    (ForgetRequest([2], round=5), 2, list(range(8))),
    (ForgetRequest([2], round=5), 1, []),
    (ForgetRequest(classes=[3], round=5), 1, [0, 2, 5]),
    (ForgetRequest(classes=[0, 1], round=5), 0, [1, 3, 6, 7]),
    (ForgetRequest([2], samples="poisoned", round=5), 2, [1, 4]),
    (ForgetRequest([2], samples=[6, 0], round=5), 2, [0, 6]),
    (ForgetRequest([2], samples=[6, 0], round=5), 3, []),
])
def test_forget_indices_by_hand(request_, pid, want):
    assert forget_indices(request_, pid, LABELS, POISONED, seed=0).tolist() == want


def test_a_fraction_is_seeded_by_seed_client_and_round():
    r = ForgetRequest([2], samples=0.25, round=5)
    a = forget_indices(r, 2, LABELS, POISONED, seed=0)
    assert len(a) == 2 and a.tolist() == forget_indices(r, 2, LABELS, POISONED, seed=0).tolist()
    draws = {tuple(forget_indices(ForgetRequest([2], samples=0.25, round=k), 2, LABELS, POISONED, 0)) for k in range(8)}
    assert len(draws) > 1  # another round, another draw


def test_kept_indices_exclude_and_only():
    earlier, now = ForgetRequest(classes=[3], round=2), ForgetRequest([2], samples="poisoned", round=5)
    assert kept_indices(LABELS, POISONED, 2, 0, [earlier, now], []).tolist() == [3, 6, 7]
    assert kept_indices(LABELS, POISONED, 2, 0, [earlier], [now]).tolist() == [1, 4]
    assert kept_indices(LABELS, POISONED, 2, 0, [], []).tolist() == list(range(8))


def test_forget_sets_name_holders_and_who_leaves():
    cfg = tiny()
    data = federated_data(cfg.data, cfg.seed)
    sets = ForgetSets.of(data, [ForgetRequest(classes=[3], round=3), ForgetRequest([1], round=3)], cfg.seed)
    assert sets.holders[0] == [pid for pid, c in enumerate(data.clients) if np.any(c.y_train == 3)]
    assert sets.holders[1] == [1] and 1 not in sets.remaining_clients(data)
    assert all(np.all(data.clients[p].y_train[sets.removed[p]] == 3) for p in (0, 2, 3))


# -- the class-unlearning arithmetic ------------------------------------------------------------
def test_output_filter_by_hand():
    p = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    proportional = apply_filter(p, filter_matrix([0], 3, "proportional"))
    np.testing.assert_allclose(proportional, [[0, 0.6, 0.4], [0, 1 / 9, 8 / 9]])
    s = np.array([[0, 0.25, 0.75], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    similar = apply_filter(p, filter_matrix([0], 3, "similarity", s))
    np.testing.assert_allclose(similar, [[0, 0.3 + 0.5 * 0.25, 0.2 + 0.5 * 0.75], [0, 0.1 + 0.025, 0.8 + 0.075]])
    two = apply_filter(p, filter_matrix([0, 1], 3, "similarity", s))  # everything goes to class 2
    np.testing.assert_allclose(two, [[0, 0, 1], [0, 0, 1]])
    z = torch.log(torch.tensor(p, dtype=torch.float32))
    np.testing.assert_allclose(torch.softmax(filtered_logits(z, filter_matrix([0], 3, "similarity", s)), 1).numpy(),
                               similar, rtol=1e-5, atol=1e-12)


def test_trw_target_by_hand():
    p = np.array([[0.1, 0.6, 0.3]])
    s = np.array([[0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    np.testing.assert_allclose(trw_target(p, np.array([0]), [0], s), [[0, 2 / 3, 1 / 3]])
    tilted = np.array([[0, np.sqrt(0.6) * 0.5, np.sqrt(0.3) * 0.5]])
    np.testing.assert_allclose(trw_target(p, np.array([0]), [0], s, temperature=2.0), tilted / tilted.sum())
    s_skew = np.array([[0, 0.9, 0.1], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    want = np.array([[0, 0.6 * 0.9 ** 2, 0.3 * 0.1 ** 2]])
    np.testing.assert_allclose(trw_target(p, np.array([0]), [0], s_skew, beta=2.0), want / want.sum())


def test_class_similarity_and_nearest_classes_by_hand():
    probs = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1]])
    s = class_similarity(probs, np.array([0, 0, 1]), 3)
    np.testing.assert_allclose(s[0], [0, 2 / 3, 1 / 3])
    np.testing.assert_allclose(s[1], [2 / 3, 0, 1 / 3])
    np.testing.assert_allclose(s[2], [0.5, 0.5, 0])  # no sample of class 2: uniform over the others
    assert nearest_classes(s, 0, 2).tolist() == [1, 2]


def test_neighbour_mia_tells_apart_what_differs_and_not_what_does_not():
    rng = np.random.default_rng(0)
    members, others = rng.normal(0, 1, (60, 3)), rng.normal(3, 1, (40, 3))
    assert neighbour_mia(members, others, np.random.default_rng(1)) > 0.9
    same = neighbour_mia(rng.normal(0, 1, (200, 3)), rng.normal(0, 1, (200, 3)), np.random.default_rng(1))
    assert abs(same - 0.5) < 0.1
    assert np.isnan(neighbour_mia(members, others[:3], np.random.default_rng(1)))


# -- what is refused, before anything runs ------------------------------------------------------
@pytest.mark.parametrize(("overrides", "message"), [
    (["forget=[{classes=[3], clients=[1]}]"], "forget[0].clients: a class request removes its classes"),
    (["forget=[{clients=[1], samples=1.5}]"], "forget[0].samples: the fraction 1.5 is not in (0, 1)"),
    (["forget=[{clients=[1, 2], samples=[0, 4]}]"], "forget[0].samples: indices name the samples of one client"),
    (["forget=[{clients=[1], samples='dirty'}]"], "forget[0].samples: 'dirty' is not a selector"),
    (["forget=[{classes=[-1]}]"], "forget[0].classes: classes must be distinct labels >= 0"),
])
def test_bad_requests_are_refused_naming_the_field(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        tiny(*overrides)


@pytest.mark.parametrize(("overrides", "message"), [
    (["store.history=true", "forget=[{clients=[1], samples='poisoned'}]", "forgetting.strategies=['federaser']"],
     "forgetting.strategies: federaser serves client requests only, and forget[0] is a samples request"),
    (["forgetting.strategies=['output-filter']"], "output-filter serves class requests only, and forget[0] is a "
                                                  "client request"),
    (["forget=[{classes=[3]}]", "forgetting.strategies=['puf@offline=true']"],
     "puf@offline=true with offline = true serves client requests only"),
    (["forget=[{classes=[3]}]", "forgetting.strategies=['trw+ieu']", "probe.metric=forget_acc"], None),
])
def test_an_unsupported_method_and_kind_pair_is_refused_before_training(overrides, message):
    if message is None:
        assert [s.label for s in check_comparison(tiny(*overrides))] == ["retrain", "trw+ieu"]
        return
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_comparison(tiny(*overrides))


def test_request_flags():
    assert request_from_flags([], "3:poisoned", []) == ForgetRequest([3], samples="poisoned")
    assert request_from_flags([], "3:0.2", []) == ForgetRequest([3], samples=0.2)
    assert request_from_flags([], "3:5,9", []) == ForgetRequest([3], samples=[5, 9])
    assert request_from_flags([], None, [7, 2]) == ForgetRequest(classes=[2, 7])
    for bad in (([1], None, [3]), ([], "x:poisoned", []), ([], None, [])):
        with pytest.raises(ConfigError, match="^--"):
            request_from_flags(*bad)


def test_the_forget_command_refuses_two_kinds_and_bad_selectors(trained_run, tmp_path, capsys):
    for argv, message in [(["--client", "1", "--class", "3"], "--client and --class: name what to forget"),
                          (["--samples", "3:some"], "--samples '3:some': write CLIENT:poisoned"),
                          (["--samples", "3:poisoned"], "forget[0].samples: client 3 has no poisoned samples")]:
        code = main(["forget", str(trained_run), *argv, "--strategy", "puf", "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and message in err[0], err
        assert not (tmp_path / "o").exists()


# -- end to end on the in-process grid ---------------------------------------------------------
def test_samples_request_end_to_end(tmp_path):
    """Client 1 forgets its poisoned samples and stays: retrain trains it on its clean samples only."""
    cfg = tiny("forget=[{clients=[1], samples='poisoned'}]", "data.backdoor.clients=[1]",
               "forgetting.strategies=['retrain', 'natural', 'puf', 'pga']")
    sent = []
    grid = LocalGrid(4, tamper=lambda pid, msg: sent.append((pid, dict(msg.content["config"]))))
    from fedunlearn.flower.runtime import Federation

    rows = compare(Federation(grid, 4), cfg, tmp_path / "cmp", log=lambda *_: None)
    data = federated_data(cfg.data, cfg.seed)
    poisoned = len(data.clients[1].poisoned)
    assert 0 < poisoned < data.clients[1].num_examples
    retrain_rounds = [c for pid, c in sent if pid == 1 and "exclude" in c and "only" not in c]
    assert retrain_rounds and all(json.loads(c["exclude"])[0]["samples"] == "poisoned" for c in retrain_rounds)
    only = [c for pid, c in sent if "only" in c]
    assert {pid for pid, c in sent if "only" in c} == {1} and len(only) == 2  # puf's forget update, pga's ascent
    by = {r["strategy"]: r for r in rows}
    assert set(by) == {"original", "retrain", "natural", "puf", "pga"}
    assert all(isinstance(by[s]["avg_gap"], float) for s in ("natural", "puf", "pga"))
    assert by["retrain"]["avg_gap"] == 0.0 and by["retrain"]["forgotten"] == "client 1 samples poisoned"
    rounds = read_csv(tmp_path / "cmp" / "seed-0" / "train" / "rounds.csv")
    assert len(rounds) == 3
    summary = read_csv(tmp_path / "cmp" / "summary.csv")
    assert all(r["kept_acc"] for r in summary) and not any(r["mia_nn"] for r in summary)


def test_class_request_end_to_end(tmp_path):
    """Class 3 from every client: the output filter zeroes it without touching the network; retrain never saw it."""
    cfg = tiny("forget=[{classes=[3]}]", "data.backdoor.clients=[]", "probe.metric=forget_acc", "train.rounds=4",
               "forgetting.strategies=['retrain', 'puf', 'output-filter', 'trw']")
    rows = compare(local_federation(4, log=lambda *_: None), cfg, tmp_path / "cmp", log=lambda *_: None)
    by = {r["strategy"]: r for r in rows}
    assert by["output-filter"]["forget_test_acc"] == 0.0 and by["output-filter"]["forget_acc"] == 0.0
    assert by["original"]["forget_acc"] > 0.5
    assert by["retrain"]["forget_acc"] == 0.0  # no client ever trained on class 3
    assert all(0 <= by[s]["mia_nn"] <= 1 for s in by) and "gap_mia_nn" in by["trw"]
    seed = tmp_path / "cmp" / "seed-0"
    filtered, _ = RunDir(seed / "strategies" / "output-filter").load_checkpoint()
    original, _ = RunDir(seed / "train").load_checkpoint()
    assert len(filtered) == len(original) + 1 and filtered[-1].shape == (10, 10)
    assert all(np.array_equal(a, b) for a, b in zip(filtered[:-1], original, strict=True))  # the network untouched
    probe = [r for r in read_csv(seed / "probe" / "all.csv") if r["model"] in ("original", "output-filter")]
    start = {r["model"]: r["value"] for r in probe if r["step"] == "0"}
    assert start["output-filter"] == start["original"]  # the probe relearns (and scores) the network


@pytest.mark.parametrize("request_", ["{clients=[1]}", "{clients=[1], samples=0.5}", "{classes=[3]}"])
def test_an_original_that_did_not_learn_the_forget_data_is_refused_for_every_kind(request_, tmp_path):
    cfg = tiny(f"forget=[{request_}]", "data.backdoor.clients=[]", "probe.metric=forget_acc", "train.rounds=1",
               "train.lr=0.001", "forgetting.min_original_forget_acc=0.9")
    with pytest.raises(ConfigError, match=r"^forgetting.min_original_forget_acc: the original model's accuracy on "
                                          r"the data to forget \((client 1|client 1 samples 0.5|class 3)\) is 0\.\d+"):
        compare(local_federation(4, log=lambda *_: None), cfg, tmp_path / "cmp", log=lambda *_: None)
    assert not (tmp_path / "cmp" / "summary.csv").exists()


@pytest.mark.parametrize("path", sorted((ROOT / "experiments").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_experiment_is_valid(path):
    specs = check_comparison(load_experiment(path))
    assert specs[0].label == "retrain" and len(specs) >= 2


def test_a_sequence_mixes_kinds(tmp_path):
    """A class forgotten at round 2, then client 2's samples and client 1 at the last round."""
    cfg = tiny("forget=[{classes=[3], round=2}, {clients=[2], samples=0.3}, {clients=[1]}]", "train.rounds=3",
               "data.backdoor.clients=[]", "probe.metric=forget_acc", "forgetting.strategies=['retrain', 'puf', 'pga']")
    sent = []
    grid = LocalGrid(4, tamper=lambda pid, msg: sent.append((pid, dict(msg.content["config"]))))
    from fedunlearn.flower.runtime import Federation

    rows = compare(Federation(grid, 4), cfg, tmp_path / "cmp", log=lambda *_: None)
    by = {r["strategy"]: r for r in rows}
    assert by["retrain"]["forgotten"] == "class 3; client 2 samples 0.3; client 1"
    assert by["retrain"]["forget_test_acc"] == 0.0
    gone = [pid for pid, c in sent if any(r["clients"] == [1] and r["samples"] == ""
                                          for r in json.loads(c.get("exclude", "[]")))]
    assert gone and 1 not in gone  # once client 1 is forgotten it is never asked to train again
    last = [json.loads(c["exclude"]) for pid, c in sent if "exclude" in c and "only" not in c][-1]
    assert [r["classes"] or r["samples"] or r["clients"] for r in last] == [[3], 0.3, [1]]
