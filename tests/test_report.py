"""Summary files and plots from a small results folder written here (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
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


def drawn_figure(monkeypatch, draw):
    """The figure ``draw()`` hands to ``_save``, laid out as saved (tight layout, drawn)."""
    from fedunlearn.report import plots

    figures = []

    def keep(fig, path):
        fig.tight_layout()
        fig.canvas.draw()
        figures.append(fig)
        return path

    monkeypatch.setattr(plots, "_save", keep)
    draw()
    return figures[0]


def test_an_unmeasurable_probe_says_so_instead_of_drawing_empty_axes(tmp_path, monkeypatch):
    """Every curve n/a (the generative r when the original and retrain do not separate): the panel says why,
    with no legend of lines that cover nothing and no axes around nothing."""
    from fedunlearn.report import plots

    write_results(tmp_path, seeds=(0,))
    nan = ProbeResult("forget_ll", "rounds", [float("nan")] * 3, float("nan"))
    write_probes(tmp_path / "seed-0", {"all": {n: nan for n in ["original", *NAMES]}})
    rows = read_csv(tmp_path / "summary.csv")
    fig = drawn_figure(monkeypatch, lambda: plots.relearning_curves(tmp_path, [tmp_path / "seed-0"], rows))
    (ax,) = fig.axes
    assert ax.get_legend() is None and not ax.lines and not ax.axison
    assert any("not measurable" in t.get_text() for t in ax.texts)


def whole(ticks, low: float, high: float) -> bool:
    inside = [t for t in ticks if low <= t <= high]
    return bool(inside) and all(float(t).is_integer() for t in inside)


def test_rounds_and_delays_are_whole_numbers_on_the_axes(tmp_path, monkeypatch):
    """A few rounds (a tiny run) would otherwise get ticks at round 1.5 and delays of 0.25 rounds."""
    from fedunlearn.report import plots

    write_results(tmp_path, seeds=(0,))
    rows = read_csv(tmp_path / "summary.csv")
    fig = drawn_figure(monkeypatch, lambda: plots.relearning_curves(tmp_path, [tmp_path / "seed-0"], rows))
    assert whole(fig.axes[0].get_xticks(), 0, 3)
    train = [{"round": r, "test_ll": -30 + r, "forget_ll": -31 + r, "forget_gap": -1.0} for r in range(1, 5)]
    atomic_write_text(tmp_path / "short" / "train" / "rounds.csv", csv_text(train, list(train[0])))
    fig = drawn_figure(monkeypatch, lambda: plots.metrics_over_rounds(tmp_path, [tmp_path / "short"], [], set()))
    assert whole(fig.axes[-1].get_xticks(), 1, 4)
    sweep = [{"sweep:model.dilution.sparsity": s, "strategy": "puf", "seed": 0, "test_ll": -20.0, "gap_forget_ll": 1.0,
              "relearn_delay": str(1 + int(s > 0))} for s in (0.0, 0.8)]
    atomic_write_text(tmp_path / "sweep.csv", csv_text(sweep, list(sweep[0])))
    fig = drawn_figure(monkeypatch, lambda: plots.sweep_plot(tmp_path))
    assert whole(fig.axes[2].get_yticks(), 1, 2)


def test_the_samples_figure_title_covers_no_panel_title(tmp_path, monkeypatch):
    from matplotlib.transforms import Bbox

    from fedunlearn.report import plots

    rng = np.random.default_rng(0)
    arrays = {"forget_classes": np.array([7])}
    for name in ["original", "retrain", "natural", "puf", "puf-ieu", "pga", "not"]:  # a comparison's seven
        arrays[f"{name}/images"] = (rng.random((40, 8, 8)) > 0.5).astype(np.float32)
        arrays[f"{name}/labels"] = rng.integers(0, 10, 40)
    np.savez(tmp_path / "samples.npz", **arrays)
    fig = drawn_figure(monkeypatch, lambda: plots.generated_samples(tmp_path, tmp_path))
    renderer = fig.canvas.get_renderer()
    title = fig._suptitle.get_window_extent(renderer)
    for ax in fig.axes:
        inter = Bbox.intersection(title, ax.title.get_window_extent(renderer))
        assert not ax.title.get_text() or inter is None or inter.width <= 1 or inter.height <= 1, ax.title.get_text()


def test_a_generative_report_speaks_of_no_accuracy(tmp_path):
    """The generative task's recovery target is retrain's log-likelihood: nothing in its report.md may say
    accuracy (the classifier's word)."""
    from fedunlearn.report import write_report

    rows = [{"strategy": name, "seed": 0, "from_scratch": name == "retrain", "test_ll": -25.0, "forget_ll": -27.0,
             "forget_gap": -2.0, "recovery_rounds": 3 if name == "puf" else "", "recovery_censored": name == "puf"}
            for name in ["original", "retrain", "puf"]]
    write_summary(tmp_path, rows)
    text = write_report(tmp_path, []).read_text()
    assert "> 3" in text and "accuracy" not in text.lower()


@pytest.mark.parametrize("exact_max_hidden, says", [
    (20, "are exact (log Z by enumeration of the hidden states)"),
    (8, "are AIS estimates (log Z from 100 runs of 2000 temperatures)"),
])
def test_a_generative_report_says_whether_its_likelihoods_are_exact_or_estimated(tmp_path, exact_max_hidden, says):
    """rbm.toml's RBM has 16 hidden units: exact up to exact_max_hidden, an AIS estimate above it."""
    from fedunlearn.config import config_to_dict, load_config, to_toml
    from fedunlearn.report import write_report

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "experiments/rbm.toml", [f"task.generative.exact_max_hidden={exact_max_hidden}"])
    atomic_write_text(tmp_path / "config.toml", to_toml(config_to_dict(cfg)))
    write_summary(tmp_path, [{"strategy": n, "seed": 0, "test_ll": -25.0, "forget_ll": -27.0} for n in ["original", "retrain"]])
    assert f"Log-likelihoods (nats per sample) {says}" in write_report(tmp_path, []).read_text()


def test_a_late_dilution_is_marked_where_it_pruned(tmp_path, monkeypatch):
    """The metrics figure of a late-diluted run marks the pruning round, so its cliff is not left unexplained."""
    from fedunlearn.config import load_config
    from fedunlearn.report import plots
    from fedunlearn.results import RunDir

    root = Path(__file__).resolve().parents[1]
    for mode, want in (("late", 7), ("early", None)):
        cfg = load_config(root / "experiments/rbm_dilution.toml",
                          ["sweep={}", "train.rounds=10", "model.dilution.sparsity=0.5",
                           f"model.dilution.mode='{mode}'", "model.dilution.finetune_rounds=3"])
        RunDir(tmp_path / mode).write_config(cfg)
        assert plots.pruning_round(tmp_path / mode) == want
    assert plots.pruning_round(tmp_path / "nowhere") is None
    train = [{"round": r, "test_ll": -30.0 + r, "forget_ll": -31.0 + r, "forget_gap": -1.0} for r in range(1, 11)]
    atomic_write_text(tmp_path / "seed-0" / "train" / "rounds.csv", csv_text(train, list(train[0])))
    fig = drawn_figure(monkeypatch, lambda: plots.metrics_over_rounds(tmp_path, [tmp_path / "seed-0"], [], set(), 7))
    assert all(any("pruned (late dilution)" in t.get_text() for t in ax.texts) for ax in fig.axes)


def test_a_folder_without_a_retrained_reference_draws_no_empty_gap_figures(tmp_path):
    """A ``fedunlearn forget`` folder (rows original and one strategy, no retrain) has no gap to draw: no
    gaps_to_retrain.png or cost_vs_quality.png of empty axes, on either task."""
    from fedunlearn.report import plots

    for task, metrics in {"generative": {"test_ll": -25.0, "forget_ll": -27.0, "forget_gap": -2.0},
                          "classification": {"test_acc": 0.9, "forget_acc": 0.2, "retain_acc": 0.95}}.items():
        out = tmp_path / task
        write_summary(out, [{"strategy": "original", "seed": 0, **metrics},
                            {"strategy": "puf", "seed": 0, "from_scratch": False, "client_epochs": 18.0, **metrics}])
        assert plots.draw_all(out) == []
        assert not (out / "plots" / "gaps_to_retrain.png").exists()


def test_the_auxiliary_classifiers_accuracy_has_no_gap_column(tmp_path):
    """aux_test_acc is the same for every model (the auxiliary classifier's): its gap would be 0 by construction."""
    rows = [{"strategy": name, "seed": 0, "from_scratch": name == "retrain", "test_ll": -25.0 - i,
             "aux_test_acc": 0.92} for i, name in enumerate(["original", "retrain", "puf"])]
    write_summary(tmp_path, rows)
    columns = list(read_csv(tmp_path / "summary.csv")[0])
    assert "aux_test_acc" in columns and "gap_test_ll" in columns and "gap_aux_test_acc" not in columns


def test_gap_error_bars_are_the_sample_std_of_report_md_and_absent_for_one_seed(tmp_path, monkeypatch):
    from fedunlearn.report import plots

    write_results(tmp_path)  # two seeds: puf's backdoor gap is 0.2 and 0.25
    rows, names = read_csv(tmp_path / "summary.csv"), NAMES
    fig = drawn_figure(monkeypatch, lambda: plots.gaps_to_retrain(tmp_path, rows, names, {"retrain"}))
    (ax,) = fig.axes
    bars = [c for c in ax.containers if c.get_label() == "puf"][0]
    column = [t.get_text() for t in ax.get_xticklabels()].index("backdoor_asr")
    low, high = bars.errorbar.lines[2][0].get_segments()[column][:, 1]  # the vertical bar of that metric
    assert high - low == pytest.approx(2 * np.std([0.2, 0.25], ddof=1))
    one = [r for r in rows if r["seed"] == "0"]
    fig = drawn_figure(monkeypatch, lambda: plots.gaps_to_retrain(tmp_path, one, names, {"retrain"}))
    assert all(c.errorbar is None for c in fig.axes[0].containers) and "1 seed" in fig.axes[0].get_title()


def test_gap_error_bars_stop_at_zero(tmp_path, monkeypatch):
    """|gap| is never negative: gaps 0 and 0.3 (mean 0.15, std 0.21) draw a bar from 0, not from -0.06."""
    from fedunlearn.report import plots

    rows = [{"strategy": name, "seed": str(seed), "gap_test_acc": "" if name == "original" else str(gap)}
            for seed, gap in [(0, 0.0), (1, 0.3)] for name in ["original", "puf"]]
    fig = drawn_figure(monkeypatch, lambda: plots.gaps_to_retrain(tmp_path, rows, ["puf"], set()))
    bars = [c for c in fig.axes[0].containers if c.get_label() == "puf"][0]
    low, high = bars.errorbar.lines[2][0].get_segments()[0][:, 1]
    assert low == pytest.approx(0.0) and high == pytest.approx(0.15 + np.std([0.0, 0.3], ddof=1))


def test_the_samples_histogram_has_a_bar_per_class_of_the_data_set(tmp_path, monkeypatch):
    """Four classes (synthetic data) draw four bars, not digits' ten."""
    from fedunlearn.report import plots

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "samples.npz", forget_classes=np.array([1]), num_classes=np.int64(4),
             **{"original/images": (rng.random((20, 8)) > 0.5).astype(np.float32),
                "original/labels": rng.integers(0, 4, 20)})
    fig = drawn_figure(monkeypatch, lambda: plots.generated_samples(tmp_path, tmp_path))
    assert len(fig.axes[1].patches) == 4
