"""The influence estimate of retrain (``[forgetting.influence] estimate``): scoring, and the columns of a comparison."""

from __future__ import annotations

import math
import re

import pytest
import torch

from fedunlearn.config import ConfigError
from fedunlearn.parts import load_experiment
from fedunlearn.phases.compare import check_comparison, compare
from fedunlearn.strategies.influence import (
    ESTIMATE_COLUMNS,
    pearson,
    relative_error,
    score_estimate,
)
from tests.local_grid import local_federation
from tests.test_influence_strategy import DEFAULT, REQUESTS, TINY

ESTIMATE = "forgetting.strategies=['retrain', 'influence@estimate=true']"
LONGER = ["train.rounds=40", "train.lr=0.1"]  # near a minimiser: residual gradient 0.04 (2 rounds: loss Pearson < 0)


def run(tmp_path, *overrides):
    cfg = load_experiment(DEFAULT, [*TINY, *overrides])
    rows = compare(local_federation(3, log=lambda *_: None), cfg, tmp_path / "cmp", log=lambda *_: None)
    return {r["strategy"]: r for r in rows}, (tmp_path / "cmp" / "summary.csv").read_text().splitlines()[0]


def test_a_prediction_equal_to_the_real_change_scores_exactly():
    real_f = torch.tensor([[0.5, -1.0, 0.2], [0.1, 0.3, -0.7], [2.0, 0.0, 1.0]], dtype=torch.float64)
    real_loss = torch.tensor([0.3, -0.2, 1.1], dtype=torch.float64)
    assert score_estimate(real_f, real_f, real_loss, real_loss) == pytest.approx({"rel_error": 0.0,
                                                                                   "loss_pearson": 1.0})
    got = score_estimate(2 * real_f, real_f, -real_loss + 5, real_loss)  # twice the change; anti-correlated
    assert got == pytest.approx({"rel_error": 1.0, "loss_pearson": -1.0})
    assert math.isnan(relative_error(real_f, torch.zeros_like(real_f)))
    assert math.isnan(pearson(torch.ones(3), real_loss))  # no spread


@pytest.mark.parametrize("kind", ["samples", "client"])
def test_estimate_columns_are_finite_and_the_loss_changes_correlate(tmp_path, kind):
    by, header = run(tmp_path, REQUESTS[kind], ESTIMATE, *LONGER)
    original = by["original"]
    for c in ESTIMATE_COLUMNS:
        assert c in header.split(",")
        assert isinstance(original[c], float) and math.isfinite(original[c]), c
        assert by["retrain"].get(c, "") == "" and by["influence@estimate=true"].get(c, "") == ""
    assert original["estimate_linearisation_error"] < 1e-8  # logistic regression is linear in θ
    # measured: loss Pearson 0.92 (test) and 1.00 (forget) for samples, 0.92 and 0.84 for a client;
    # Δf relative error 0.52-0.75 (< 1: better than predicting no change)
    assert original["estimate_loss_pearson_forget"] > 0.7
    assert original["estimate_loss_pearson_test"] > 0.7
    assert original["estimate_rel_error_forget"] < 0.9


def test_estimate_columns_are_absent_when_off_or_not_applicable(tmp_path):
    _, header = run(tmp_path / "off", REQUESTS["samples"], "forgetting.strategies=['retrain', 'influence']")
    assert not any(c in header for c in ESTIMATE_COLUMNS)
    two = "forget=[{clients=[1], samples=0.2, round=1}, {clients=[2], samples=0.2}]"
    _, header = run(tmp_path / "two", two, ESTIMATE)
    assert not any(c in header for c in ESTIMATE_COLUMNS)


def test_estimate_setting_is_checked():
    with pytest.raises(ConfigError, match=re.escape("forgetting.influence.estimate: expected bool")):
        check_comparison(load_experiment(DEFAULT, [*TINY, REQUESTS["samples"],
                                                   "forgetting.strategies=['influence@estimate=1']"]))
