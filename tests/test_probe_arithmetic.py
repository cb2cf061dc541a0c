"""The relearning-delay arithmetic: threshold, delay, censoring, ratio bounds, AUC."""

from __future__ import annotations

import pytest

from fedunlearn.evaluation.probe import ProbeResult, delay_ratio, threshold


def probe(curve, tau=0.9, metric="backdoor"):
    return ProbeResult(metric, "rounds", curve, tau)


def test_threshold_for_accuracy_and_loss():
    assert threshold("forget_acc", 0.8, 0.05) == pytest.approx(0.76)
    assert threshold("forget_loss", 0.2, 0.05) == pytest.approx(0.21)


def test_original_model_has_delay_zero():
    original_value = 0.96
    res = probe([original_value, 0.97, 0.99], tau=threshold("backdoor", original_value, 0.05))
    assert res.delay == 0 and not res.censored


def test_delay_is_the_first_round_reaching_the_threshold():
    res = probe([0.1, 0.5, 0.95, 0.7, 0.99])
    assert res.delay == 2 and res.delay_text == "2"
    loss = probe([3.0, 1.0, 0.2, 0.1], tau=0.21, metric="forget_loss")
    assert loss.delay == 2


def test_a_curve_that_never_reaches_the_threshold_is_censored_not_the_cap():
    res = probe([0.0, 0.2, 0.4, 0.6])
    assert res.censored and res.delay is None and res.delay_text == "> 3"


def test_auc_is_the_mean_over_probe_rounds():
    assert probe([0.9, 0.2, 0.4, 0.6]).auc == pytest.approx(0.4)


def test_ratio_is_a_number_or_a_bound():
    assert delay_ratio(probe([0, 0, 0.95]), probe([0, 0, 0, 0, 0.95])) == (0.5, "0.50")
    # model censored (> 3), retrain at 2: ratio > 3/2, reported as the bound (3 + 1)/2
    assert delay_ratio(probe([0, 0, 0, 0]), probe([0, 0, 0.95, 1])) == (None, ">= 2.00")
    # retrain censored (> 3), model at 2: ratio < 2/3, reported as the bound 2/(3 + 1)
    assert delay_ratio(probe([0, 0, 0.95, 1]), probe([0, 0, 0, 0])) == (None, "<= 0.50")
    assert delay_ratio(probe([0, 0]), probe([0, 0]))[1] == "n/a (both censored)"
    assert delay_ratio(probe([0, 0.95]), probe([0.95, 1]))[1] == "n/a (retrain delay 0)"


def test_a_probe_commands_curves_are_written_with_the_settings_they_were_computed_with(tmp_path):
    """``fedunlearn probe`` replaces RUN_DIR/probe/MODE.csv: MODE.toml beside it names the request and cap."""
    import dataclasses
    from pathlib import Path

    from fedunlearn.config import ForgetRequest, load_config
    from fedunlearn.phases.probe import ProbeJob
    from fedunlearn.results import read_csv

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "experiments/default.toml")
    cfg = dataclasses.replace(cfg, forget=[ForgetRequest(classes=[3], round=1)],
                              probe=dataclasses.replace(cfg.probe, modes=["alone"], alone_max_steps=2))
    results = {"alone": {"original": ProbeResult("forget_acc", "steps", [0.9, 0.95, 0.97], 0.9)}}
    ProbeJob(cfg, None, [], {}).write(tmp_path, results)
    recorded = load_config(tmp_path / "probe" / "alone.toml")
    assert recorded.forget[0].classes == [3] and recorded.probe.alone_max_steps == 2
    assert [float(r["value"]) for r in read_csv(tmp_path / "probe" / "alone.csv")] == [0.9, 0.95, 0.97]
