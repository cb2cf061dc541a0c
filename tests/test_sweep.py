"""Sweeps: every combination of the [sweep] values, checked before anything runs, and its plot."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedunlearn.cli import main
from fedunlearn.config import load_config
from fedunlearn.io import atomic_write_text
from fedunlearn.phases.sweep import point_configs, point_name, sweep_points
from fedunlearn.report.plots import sweep_plot
from fedunlearn.results import csv_text

ROOT = Path(__file__).resolve().parents[1]


def test_points_are_every_combination_first_key_slowest():
    points = sweep_points({"train.lr": [0.1, 0.2], "model.rbm.hidden": [8, 16, 32]})
    assert len(points) == 6
    assert points[0] == {"train.lr": 0.1, "model.rbm.hidden": 8} and points[3] == {"train.lr": 0.2, "model.rbm.hidden": 8}
    assert point_name(points[1]) == "train.lr=0.1,model.rbm.hidden=16"


def test_each_point_is_the_experiment_with_its_values_and_no_sweep():
    cfg = load_config(ROOT / "experiments/rbm.toml", ["sweep={\"train.lr\" = [0.01, 0.2]}"])
    points = point_configs(ROOT / "experiments/rbm.toml", [], cfg, 1)
    assert [p.train.lr for _, p in points] == [0.01, 0.2]
    assert all(p.sweep == {} and p.task.name == "generative" for _, p in points)


@pytest.mark.parametrize("sweep, message", [
    ('{"train.lr" = [0.1, -1]}', "train.lr"),                                # a bad value at one point
    ('{"train.rounds_typo" = [1]}', "train.rounds_typo: unknown key"),     # a key that is not a setting
    ('{"seed" = [0, 1]}', "sweep.seed: cannot be swept"),                  # seeds are --seeds
    ('{"train.lr" = []}', "sweep.train.lr: lists no value"),
])
def test_a_bad_point_is_refused_before_anything_runs(capsys, tmp_path, sweep, message):
    code = main(["run", str(ROOT / "experiments/rbm.toml"), "--set", f"sweep={sweep}", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "o").exists()


def test_sweep_plot_draws_each_strategy_against_the_numeric_key(tmp_path):
    rows = [{"sweep:model.dilution.sparsity": s, "sweep:model.dilution.mode": mode, "strategy": name, "seed": seed,
             "test_ll": -20 - 10 * s, "gap_forget_ll": 1 + s, "relearn_delay": "> 10" if name == "puf" else "2"}
            for s in (0.0, 0.5, 0.9) for mode in ("early", "late") for name in ("original", "retrain", "puf")
            for seed in (0, 1)]
    atomic_write_text(tmp_path / "sweep.csv", csv_text(rows, list(rows[0])))
    path = sweep_plot(tmp_path)
    assert path == tmp_path / "plots" / "sweep.png" and path.stat().st_size > 10_000
    with pytest.raises(ValueError, match="no numeric swept key"):
        only_text = [{**r, "sweep:model.dilution.sparsity": "x"} for r in rows]
        atomic_write_text(tmp_path / "sweep.csv", csv_text(only_text, list(rows[0])))
        sweep_plot(tmp_path)
