"""The comparison's figures, drawn from the files a run left in its folder.

* ``accuracy_over_rounds.png``: test accuracy and forget metric through training, unlearning and
  recovery, one line per strategy, the forget request marked;
* ``relearning_curves.png``: the probe's forget metric per probe round (or step), with the threshold;

both draw every seed (thin lines) and their mean (thick), and say so in their titles;
* ``gaps_to_retrain.png``: |metric − retrain's| per metric and strategy, and the Average Gap, mean
  over seeds ± std;
* ``cost_vs_quality.png``: client-epochs against the forgetting gap, one point per strategy.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fedunlearn.report.report import read_summary  # noqa: E402
from fedunlearn.results import read_csv  # noqa: E402

GAP_METRICS = ["test_acc", "retain_acc", "forget_acc", "forget_test_acc", "kept_acc", "mia_efficacy", "mia_yeom",
               "mia_nn", "backdoor_asr"]
AVERAGE_GAP_BAR = ("Average Gap", "avg_gap")  # mean |gap| of UA, MIA-efficacy, RA and TA


def _f(value: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _colors(names: list[str]) -> dict[str, tuple]:
    """A distinct colour per name (tab10, or tab20 past ten names, so no two legend entries share one)."""
    cmap, size = (plt.get_cmap("tab10"), 10) if len(names) <= 10 else (plt.get_cmap("tab20"), 20)
    return {n: cmap(i % size) for i, n in enumerate(names)}


def _has_backdoor(rows: list[dict]) -> bool:
    return any(not math.isnan(_f(r.get("backdoor_asr"))) for r in rows)


def _mean_curve(curves: list[list[tuple[int, float]]]) -> tuple[list[int], list[float]]:
    """The mean over seeds at each x that some seed reached (seeds may stop at different rounds)."""
    by_x = defaultdict(list)
    for curve in curves:
        for x, y in curve:
            if not math.isnan(y):
                by_x[x].append(y)
    xs = sorted(by_x)
    return xs, [float(np.mean(by_x[x])) for x in xs]


def _draw_seeds(ax, curves: list[list[tuple[int, float]]], color, label: str, ls: str = "-", marker=None) -> None:
    """Thin lines per seed and a thick mean line (the only one labelled)."""
    if len(curves) > 1:
        for curve in curves:
            ax.plot([p[0] for p in curve], [p[1] for p in curve], color=color, lw=0.7, alpha=0.35, ls=ls)
    xs, ys = _mean_curve(curves)
    ax.plot(xs, ys, color=color, lw=2 if len(curves) > 1 else 1.5, ls=ls, label=label, marker=marker, ms=3)


def _seeds_note(seed_dirs: list[Path]) -> str:
    n = len(seed_dirs)
    return f"{n} seeds: thick line the mean, thin lines each seed" if n > 1 else seed_dirs[0].name


def accuracy_over_rounds(out: Path, seed_dirs: list[Path], names: list[str], scratch: set[str], backdoor: bool) -> Path:
    panels = [("test_acc", "test accuracy"), ("forget_acc", "forget accuracy (forgotten clients' train data)")]
    if backdoor:
        panels.append(("backdoor_asr", "backdoor attack success rate"))
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 3.2 * len(panels)), sharex=True)
    colors = _colors(["original"] + names)
    trains = [read_csv(d / "train" / "rounds.csv") for d in seed_dirs]
    forget_round = max(int(r["round"]) for r in trains[0])
    for ax, (key, label) in zip(axes, panels, strict=True):
        _draw_seeds(ax, [[(int(r["round"]), _f(r[key])) for r in train] for train in trains], colors["original"],
                    "training (all clients)")
        for name in names:
            curves = []
            for seed_dir, train in zip(seed_dirs, trains, strict=True):
                path = seed_dir / "strategies" / name / "trajectory.csv"
                if not path.exists():
                    continue
                curve = [(int(r["round"]), _f(r[key])) for r in read_csv(path)]
                if name not in scratch:  # the others continue from the pre-forget model
                    curve = [(forget_round, _f(train[-1][key]))] + curve
                curves.append(curve)
            if curves:
                _draw_seeds(ax, curves, colors[name], name, ls="--" if name in scratch else "-")
        ax.axvline(forget_round, color="black", ls=":", lw=1)
        ax.text(forget_round, 0.04, " forget request", transform=ax.get_xaxis_transform(), fontsize=8)
        ax.set_ylabel(label.split(" (")[0] + " (fraction)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_title(f"Accuracy through training, unlearning and recovery ({_seeds_note(seed_dirs)})")
    axes[-1].set_xlabel("round (training, then each strategy's unlearning and recovery rounds)")
    _legend_outside(fig, axes[0])
    return _save(fig, out / "accuracy_over_rounds.png")


def curve_label(name: str, delay: str) -> str:
    """Legend entry of a probe curve; a censored delay ("> R") says so."""
    return f"{name} (delay {delay}{', censored' if delay.startswith('>') else ''})"


def relearning_curves(out: Path, seed_dirs: list[Path], rows: list[dict]) -> Path | None:
    modes = sorted({p.stem for d in seed_dirs for p in (d / "probe").glob("*.csv")})
    if not modes:
        return None
    fig, axes = plt.subplots(len(modes), 1, figsize=(9, 4.8 * len(modes)), squeeze=False)
    for ax, mode in zip(axes[:, 0], modes, strict=True):
        curves: dict[str, list[list[tuple[int, float]]]] = defaultdict(list)
        delays: dict[str, list[str]] = defaultdict(list)
        thresholds, data = [], []
        # the first probe mode's columns are unprefixed, every other mode's are relearn_<mode>_*
        prefix = f"relearn_{mode}" if f"relearn_{mode}_delay" in next(iter(rows), {}) else "relearn"
        for seed_dir in seed_dirs:
            path = seed_dir / "probe" / f"{mode}.csv"
            if not path.exists():
                continue
            data = read_csv(path)
            seed = seed_dir.name.split("-", 1)[1]
            by_model = defaultdict(list)
            for r in data:
                by_model[r["model"]].append((int(r["step"]), _f(r["value"])))
            for name, pts in by_model.items():
                curves[name].append(pts)
                delays[name] += [r.get(f"{prefix}_delay", "") for r in rows
                                 if r["strategy"] == name and r["seed"] == seed]
            thresholds.append(_f(data[0]["threshold"]))
        colors = _colors(list(curves))
        for name, seed_curves in curves.items():
            _draw_seeds(ax, seed_curves, colors[name], curve_label(name, " / ".join(delays[name])), marker="o")
        ax.axhline(float(np.mean(thresholds)), color="black", ls=":", lw=1,
                   label="threshold: original's value x (1 -/+ alpha)" + (", mean over seeds" if len(thresholds) > 1 else ""))
        unit, metric = data[0]["unit"], data[0].get("metric", "")
        ax.set_title(f"Relearning the forgotten data: mode '{mode}' ({_seeds_note(seed_dirs)})", fontsize=10)
        ax.set_xlabel(f"probe {unit} ({'FedAvg rounds, forgotten clients re-added' if unit == 'rounds' else 'local SGD steps of the forgotten clients alone'})")
        if metric == "forget_loss":
            ax.set_ylabel("forget loss (mean cross-entropy, nats)")
        else:
            names = {"backdoor": "backdoor attack success rate", "forget_acc": "forget accuracy"}
            ax.set_ylabel(f"{names.get(metric, 'forget metric')} (fraction)")
            ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: covers nothing
    return _save(fig, out / "relearning_curves.png")


def gaps_to_retrain(out: Path, rows: list[dict], names: list[str], scratch: set[str]) -> Path:
    bars = [(m, f"gap_{m}") for m in GAP_METRICS] + [AVERAGE_GAP_BAR]
    bars = [(label, col) for label, col in bars if any(not math.isnan(_f(r.get(col))) for r in rows)]
    shown = ["original"] + [n for n in names if n not in scratch]
    colors = _colors(["original"] + names)
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / len(shown)
    for i, name in enumerate(shown):
        means, stds = [], []
        for _, col in bars:
            vals = [_f(r.get(col)) for r in rows if r["strategy"] == name and not math.isnan(_f(r.get(col)))]
            means.append(np.mean(vals) if vals else np.nan)
            stds.append(np.std(vals) if len(vals) > 1 else 0.0)
        ax.bar(np.arange(len(bars)) + i * width, means, width, yerr=stds, capsize=3, color=colors[name], label=name)
    seeds = len({r["seed"] for r in rows})
    ax.set_xticks(np.arange(len(bars)) + width * (len(shown) - 1) / 2, [label for label, _ in bars],
                  rotation=20, ha="right")
    ax.set_ylabel("|metric - retrain's metric| (fraction)")
    ax.set_xlabel("metric")
    ax.set_title(f"Gap to the retrained model per metric (lower is closer to exact unlearning; "
                 f"mean ± std over {seeds} seed(s))")
    ax.grid(axis="y", alpha=0.3)
    _legend_outside(fig, ax)
    return _save(fig, out / "gaps_to_retrain.png")


def cost_vs_quality(out: Path, rows: list[dict], names: list[str], backdoor: bool) -> Path:
    key = "backdoor_asr" if backdoor else "forget_acc"
    colors = _colors(["original"] + names)
    fig, ax = plt.subplots(figsize=(9.5, 5))
    for name in names:
        mine = [r for r in rows if r["strategy"] == name]
        cost = np.mean([_f(r["client_epochs"]) for r in mine])
        gap = np.mean([_f(r[f"gap_{key}"]) for r in mine])
        ax.scatter(cost, gap, s=60, color=colors[name], label=name, zorder=3)
    ax.set_xlabel("cost: client-epochs spent on forgetting (and recovery)")
    ax.set_ylabel(f"|{key} - retrain's {key}| (fraction)")
    ax.set_title("Cost against forgetting quality (lower left is better; mean over seeds)")
    ax.grid(alpha=0.3)
    _legend_outside(fig, ax)
    return _save(fig, out / "cost_vs_quality.png")


def _legend_outside(fig, ax) -> None:
    """The legend of ``ax``'s lines to the right of every axes, where it covers no data or label."""
    fig.legend(*ax.get_legend_handles_labels(), fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 0.98),
               bbox_transform=fig.transFigure)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # the image grows to hold legends outside the axes
    plt.close(fig)
    return path


def draw_all(run_dir: str | Path) -> list[Path]:
    """Draw every figure of a comparison folder into ``run_dir/plots``; returns the files written."""
    run_dir = Path(run_dir)
    rows = read_summary(run_dir)
    names = list(dict.fromkeys(r["strategy"] for r in rows if r["strategy"] != "original"))
    scratch = {r["strategy"] for r in rows if r.get("from_scratch") == "True"} or {"retrain"}
    seed_dirs = sorted(run_dir.glob("seed-*"), key=lambda d: int(d.name.split("-", 1)[1]))
    seeds = {str(r["seed"]) for r in rows}
    seed_dirs = [d for d in seed_dirs if d.name.split("-", 1)[1] in seeds]  # the seeds summary.csv reports
    out = run_dir / "plots"
    backdoor = _has_backdoor(rows)
    trained = seed_dirs and all((d / "train" / "rounds.csv").exists() for d in seed_dirs)
    costed = any(not math.isnan(_f(r.get("client_epochs"))) for r in rows if r["strategy"] in names)
    # a comparison written by anyone's ServerApp (write_comparison) may lack rounds and costs
    drawn = [accuracy_over_rounds(out, seed_dirs, names, scratch, backdoor) if trained else None,
             relearning_curves(out, seed_dirs, rows), gaps_to_retrain(out, rows, names, scratch),
             cost_vs_quality(out, rows, names, backdoor) if costed else None]
    return [p for p in drawn if p is not None]
