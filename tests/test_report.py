"""Summary files and plots from a small results folder written here (no training)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from fedunlearn.cli import main
from fedunlearn.evaluation.probe import ProbeResult
from fedunlearn.io import atomic_write_text
from fedunlearn.phases.compare import probe_columns, write_summary
from fedunlearn.phases.probe import write_probes
from fedunlearn.report.plots import curve_label
from fedunlearn.results import ROUND_COLUMNS, csv_text, read_csv

NAMES = ["retrain", "natural", "puf"]


def write_results(out: Path) -> None:
    """Two seeds, three strategies, a backdoor, and a retrained model whose probe is censored."""
    rows = []
    for seed in (0, 1):
        seed_dir = out / f"seed-{seed}"
        train = [{"round": r, "test_acc": 0.1 + 0.08 * r, "test_loss": 1 / r, "forget_acc": 0.5 + 0.04 * r,
                  "backdoor_asr": 0.09 * r, "train_loss": 1 / r, "clients": 4, "failures": 0, "wall_s": r}
                 for r in range(1, 11)]
        atomic_write_text(seed_dir / "train" / "rounds.csv", csv_text(train, ROUND_COLUMNS))
        curves = {"original": [0.9, 0.95, 0.97, 0.99], "retrain": [0.0, 0.1, 0.2, 0.3],
                  "natural": [0.8, 0.9, 0.95, 0.97], "puf": [0.1, 0.4, 0.88, 0.95]}
        probes = {"all": {n: ProbeResult("backdoor", "rounds", c, 0.855) for n, c in curves.items()}}
        write_probes(seed_dir, probes)
        for name in ["original", *NAMES]:
            row = {"strategy": name, "seed": seed, "test_acc": 0.9 - 0.01 * seed, "retain_acc": 0.95, "forget_acc": 0.3,
                   "unlearn_acc": 0.7, "mia_efficacy": 0.5, "mia_yeom": 0.4, "weight_dist_to_retrain": 0.2,
                   "pred_kl_to_retrain": 0.01, "backdoor_asr": {"original": 0.9, "retrain": 0.0}.get(name, 0.2 + 0.05 * seed),
                   **probe_columns(probes, name, "retrain"), "from_scratch": name == "retrain"}
            if name != "original":
                row.update({"client_epochs": {"retrain": 40.0}.get(name, 8.0), "rounds": 3, "wall_s": 1.0,
                            "recovery_rounds": 2 if name == "puf" else ""})
                traj = [{"strategy": name, "round": r, "phase": "recover", "test_acc": 0.8, "forget_acc": 0.3,
                         "backdoor_asr": 0.1} for r in (range(1, 11) if name == "retrain" else range(11, 14))]
                atomic_write_text(seed_dir / "strategies" / name / "trajectory.csv",
                                  csv_text(traj, list(traj[0])))
            rows.append(row)
    write_summary(out, rows)


def test_censored_probe_is_reported_as_censored_in_csv_json_and_plot(tmp_path):
    write_results(tmp_path)
    rows = {(r["strategy"], r["seed"]): r for r in read_csv(tmp_path / "summary.csv")}
    assert rows[("retrain", "0")]["relearn_delay"] == "> 3" and rows[("retrain", "0")]["relearn_censored"] == "True"
    assert rows[("puf", "0")]["relearn_delay"] == "2" and rows[("puf", "0")]["relearn_ratio_to_retrain"] == "<= 0.50"
    assert rows[("original", "0")]["relearn_delay"] == "0"
    data = json.loads((tmp_path / "summary.json").read_text())
    retrain = next(r for r in data if r["strategy"] == "retrain")
    assert retrain["relearn_delay"] == "> 3" and retrain["relearn_censored"] is True
    assert curve_label("retrain", "> 3") == "retrain (delay > 3, censored)"
    assert curve_label("puf", "2") == "puf (delay 2)"


def test_gap_columns_are_distances_to_retrain_of_the_same_seed(tmp_path):
    write_results(tmp_path)
    rows = {(r["strategy"], r["seed"]): r for r in read_csv(tmp_path / "summary.csv")}
    assert float(rows[("puf", "1")]["gap_backdoor_asr"]) == 0.25
    assert float(rows[("retrain", "1")]["gap_test_acc"]) == 0.0


def test_plot_command_renders_every_plot_and_the_report(tmp_path, capsys):
    write_results(tmp_path)
    assert main(["plot", str(tmp_path)]) == 0
    names = ["accuracy_over_rounds", "relearning_curves", "gaps_to_retrain", "cost_vs_quality"]
    for name in names:
        with Image.open(tmp_path / "plots" / f"{name}.png") as img:
            width, height = img.size
            colours = len(set(img.convert("RGB").resize((200, 100)).getdata()))
        assert width > 500 and height > 300 and colours > 20  # a drawn figure, not a blank canvas
    report = (tmp_path / "report.md").read_text()
    assert "| puf |" in report and "0.225 ± 0.025" in report  # backdoor ASR, mean ± std over 2 seeds
    assert all(f"plots/{n}.png" in report for n in names)


def test_plot_on_a_folder_without_results_exits_2(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    assert "summary.csv" in capsys.readouterr().err
