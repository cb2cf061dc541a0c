"""Summary files and plots from a small results folder written here (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from fedunlearn.cli import main
from fedunlearn.evaluation.probe import ProbeResult
from fedunlearn.io import atomic_write_text
from fedunlearn.phases.compare import probe_columns, write_summary
from fedunlearn.phases.probe import write_probes
from fedunlearn.report.plots import curve_label
from fedunlearn.results import RUN_COLUMNS, csv_text, read_csv

NAMES = ["retrain", "natural", "puf"]


def write_results(out: Path, names: list[str] = NAMES, seeds: tuple[int, ...] = (0, 1)) -> None:
    """Seeds, three strategies (retrain first), a backdoor, and a retrained model whose probe is censored."""
    rows = []
    retrain, natural, puf = names
    for seed in seeds:
        seed_dir = out / f"seed-{seed}"
        train = [{"round": r, "test_acc": 0.1 + 0.08 * r, "test_loss": 1 / r, "forget_acc": 0.5 + 0.04 * r,
                  "backdoor_asr": 0.09 * r, "train_loss": 1 / r, "clients": 4, "failures": 0, "wall_s": r}
                 for r in range(1, 11)]
        atomic_write_text(seed_dir / "train" / "rounds.csv", csv_text(train, ["round", "test_acc", "test_loss", "forget_acc", "backdoor_asr", *RUN_COLUMNS]))
        curves = {"original": [0.9, 0.95, 0.97, 0.99], retrain: [0.0, 0.1, 0.2, 0.3],
                  natural: [0.8, 0.9, 0.95, 0.97], puf: [0.1, 0.4 + 0.1 * seed, 0.88, 0.95]}
        probes = {"all": {n: ProbeResult("backdoor", "rounds", c, 0.855) for n, c in curves.items()}}
        write_probes(seed_dir, probes)
        for name in ["original", *names]:
            row = {"strategy": name, "seed": seed, "test_acc": 0.9 - 0.01 * seed, "retain_acc": 0.95, "forget_acc": 0.3,
                   "unlearn_acc": 0.7, "mia_efficacy": 0.5 + 0.02 * seed * seed, "mia_yeom": 0.4,
                   "weight_dist_to_retrain": 0.2, "pred_kl_to_retrain": 0.01,
                   "backdoor_asr": {"original": 0.9, retrain: 0.0}.get(name, 0.2 + 0.05 * seed),
                   **probe_columns(probes, name, retrain), "from_scratch": name == retrain}
            if name != "original":
                row.update({"client_epochs": {retrain: 40.0}.get(name, 8.0), "rounds": 3, "wall_s": 1.0,
                            "recovery_rounds": 2 + seed if name == puf else ""})
                traj = [{"strategy": name, "round": r, "phase": "recover", "test_acc": 0.8, "forget_acc": 0.3,
                         "backdoor_asr": 0.1} for r in (range(1, 11) if name == retrain else range(11, 14))]
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
    assert "| puf |" in report and "0.225 ± 0.035" in report  # backdoor ASR, mean ± sample std over 2 seeds
    assert all(f"plots/{n}.png" in report for n in names)


def test_plot_on_a_forget_folder_draws_no_gap_plots_and_writes_the_report(tmp_path, capsys):
    """`fedunlearn forget` writes the original and one strategy, no retrain: there is no gap to draw."""
    write_summary(tmp_path, [{"strategy": "original", "seed": 0, "test_acc": 0.92, "forget_acc": 0.98,
                              "backdoor_asr": 0.97},
                             {"strategy": "puf", "seed": 0, "from_scratch": False, "test_acc": 0.9, "forget_acc": 0.18,
                              "backdoor_asr": 0.0, "client_epochs": 10.0, "rounds": 2, "recovery_rounds": 1}])
    assert main(["plot", str(tmp_path)]) == 0  # a KeyError on gap_forget_ll before
    assert not (tmp_path / "plots" / "cost_vs_quality.png").exists()
    assert not (tmp_path / "plots" / "gaps_to_retrain.png").exists()  # an empty figure in nats before
    assert "| puf |" in (tmp_path / "report.md").read_text()


def test_plot_on_a_folder_without_results_exits_2(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    assert "summary.csv" in capsys.readouterr().err


def mean_table(report: str) -> dict[str, dict[str, str]]:
    """The first table of report.md (mean ± std over seeds) as {strategy: {column: cell}}."""
    lines = [line for line in report.split("## Every seed")[0].splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return {cells[0]: dict(zip(header, cells, strict=True))
            for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])}


def test_report_means_and_deviations_are_those_of_the_per_seed_rows(tmp_path):
    write_results(tmp_path, seeds=(0, 1, 2))
    assert main(["plot", str(tmp_path)]) == 0
    table = mean_table((tmp_path / "report.md").read_text())
    rows = read_csv(tmp_path / "summary.csv")
    checked = 0
    for name, cells in table.items():
        mine = [r for r in rows if r["strategy"] == name]
        assert len(mine) == 3
        for column, cell in cells.items():
            values = [r[column] for r in mine] if column != "strategy" else []
            if not cell or not values or any(v.startswith((">", "<", "n/a")) for v in values):
                continue
            numbers = np.array([float(v) for v in values])
            mean, std = cell.split(" ± ")
            assert mean == f"{numbers.mean():.3g}" and std == f"{numbers.std(ddof=1):.2g}", (name, column, cell)
            checked += 1
    assert checked > 20
    # Censored delays are bounds, never averaged as numbers: retrain's probe never reached the threshold.
    assert table["retrain"]["relearn_delay"] == "> 3" and "±" not in table["retrain"]["relearn_delay"]
    assert table["puf"]["recovery_rounds"] == "3 ± 1"
    assert "every seed" in (tmp_path / "report.md").read_text().lower()


def overlaps(a, b) -> bool:
    from matplotlib.transforms import Bbox

    inter = Bbox.intersection(a, b)
    return inter is not None and inter.width > 1 and inter.height > 1


def test_no_legend_covers_data_or_labels_even_with_60_character_names(tmp_path, monkeypatch):
    from fedunlearn.report import plots

    names = ["retrain", "natural", "puf@" + "x" * 56]
    assert len(names[2]) == 60
    write_results(tmp_path, names=names)
    problems, seen = [], []
    save = plots._save

    def check_then_save(fig, path):
        fig.tight_layout()
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
        assert legends, path.name
        for legend in legends:
            box = legend.get_window_extent(renderer)
            for ax in fig.axes:
                parts = {"data area": ax.get_window_extent(renderer),
                         "x label": ax.xaxis.label.get_window_extent(renderer),
                         "y label": ax.yaxis.label.get_window_extent(renderer),
                         "title": ax.title.get_window_extent(renderer)}
                problems.extend(f"{path.name}: legend over the {k}" for k, b in parts.items() if overlaps(box, b))
        seen.append(path.name)
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", check_then_save)
    plots.draw_all(tmp_path)
    assert sorted(seen) == ["accuracy_over_rounds.png", "cost_vs_quality.png", "gaps_to_retrain.png",
                            "relearning_curves.png"]
    assert problems == []
