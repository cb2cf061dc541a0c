"""The comparison's figures, drawn from the files a run left in its folder.

* ``accuracy_over_rounds.png``: test accuracy and forget metric through training, unlearning and
  recovery, one line per strategy, the forget request marked;
* ``relearning_curves.png``: the probe's forget metric per probe round (or step), with the threshold;
* ``gaps_to_retrain.png``: |metric − retrain's| per metric and strategy, mean over seeds ± std;
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

GAP_METRICS = ["test_acc", "retain_acc", "forget_acc", "mia_efficacy", "mia_yeom", "backdoor_asr"]


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


def accuracy_over_rounds(out: Path, seed_dir: Path, names: list[str], scratch: set[str], backdoor: bool) -> Path:
    panels = [("test_acc", "test accuracy"), ("forget_acc", "forget accuracy (forgotten clients' train data)")]
    if backdoor:
        panels.append(("backdoor_asr", "backdoor attack success rate"))
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 3.2 * len(panels)), sharex=True)
    colors = _colors(["original"] + names)
    train = read_csv(seed_dir / "train" / "rounds.csv")
    forget_round = max(int(r["round"]) for r in train)
    for ax, (key, label) in zip(axes, panels, strict=True):
        ax.plot([int(r["round"]) for r in train], [_f(r[key]) for r in train], color=colors["original"],
                label="training (all clients)", lw=2)
        for name in names:
            path = seed_dir / "strategies" / name / "trajectory.csv"
            if not path.exists():
                continue
            traj = read_csv(path)
            xs, ys = [int(r["round"]) for r in traj], [_f(r[key]) for r in traj]
            if name not in scratch:  # the others continue from the pre-forget model
                xs, ys = [forget_round] + xs, [_f(train[-1][key])] + ys
            ax.plot(xs, ys, color=colors[name], label=name, lw=1.4, ls="--" if name in scratch else "-")
        ax.axvline(forget_round, color="black", ls=":", lw=1)
        ax.text(forget_round, 0.04, " forget request", transform=ax.get_xaxis_transform(), fontsize=8)
        ax.set_ylabel(label.split(" (")[0] + " (fraction)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_title(f"Accuracy through training, unlearning and recovery ({seed_dir.name})")
    axes[-1].set_xlabel("round (training, then each strategy's unlearning and recovery rounds)")
    axes[0].legend(fontsize=8, ncol=2, loc="lower right")
    return _save(fig, out / "accuracy_over_rounds.png")


def curve_label(name: str, delay: str) -> str:
    """Legend entry of a probe curve; a censored delay ("> R") says so."""
    return f"{name} (delay {delay}{', censored' if delay.startswith('>') else ''})"


def relearning_curves(out: Path, seed_dir: Path, rows: list[dict]) -> Path | None:
    files = sorted((seed_dir / "probe").glob("*.csv"))
    if not files:
        return None
    fig, axes = plt.subplots(1, len(files), figsize=(6.5 * len(files), 6.2), squeeze=False)
    seed = seed_dir.name.split("-", 1)[1]
    censored = {(r["strategy"]): r for r in rows if r["seed"] == seed}
    for ax, path in zip(axes[0], files, strict=True):
        mode = path.stem
        curves = defaultdict(list)
        data = read_csv(path)
        for r in data:
            curves[r["model"]].append((int(r["step"]), _f(r["value"])))
        colors = _colors(list(curves))
        # the first probe mode's columns are unprefixed, every other mode's are relearn_<mode>_*
        prefix = f"relearn_{mode}" if f"relearn_{mode}_delay" in next(iter(rows), {}) else "relearn"
        for name, pts in curves.items():
            delay = censored.get(name, {}).get(f"{prefix}_delay", "")
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, color=colors[name],
                    label=curve_label(name, delay))
        ax.axhline(_f(data[0]["threshold"]), color="black", ls=":", lw=1, label="threshold: original's value x (1 -/+ alpha)")
        unit, metric = data[0]["unit"], data[0].get("metric", "")
        ax.set_title(f"Relearning the forgotten clients: mode '{mode}' ({seed_dir.name})")
        ax.set_xlabel(f"probe {unit} ({'FedAvg rounds, forgotten clients re-added' if unit == 'rounds' else 'local SGD steps of the forgotten clients alone'})")
        if metric == "forget_loss":
            ax.set_ylabel("forget loss (mean cross-entropy, nats)")
        else:
            names = {"backdoor": "backdoor attack success rate", "forget_acc": "forget accuracy"}
            ax.set_ylabel(f"{names.get(metric, 'forget metric')} (fraction)")
            ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)  # below: covers no curve
    return _save(fig, out / "relearning_curves.png")


def gaps_to_retrain(out: Path, rows: list[dict], names: list[str], scratch: set[str]) -> Path:
    metrics = [m for m in GAP_METRICS if any(not math.isnan(_f(r.get(f"gap_{m}"))) for r in rows)]
    shown = ["original"] + [n for n in names if n not in scratch]
    colors = _colors(["original"] + names)
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / len(shown)
    for i, name in enumerate(shown):
        means, stds = [], []
        for m in metrics:
            vals = [_f(r[f"gap_{m}"]) for r in rows if r["strategy"] == name and not math.isnan(_f(r[f"gap_{m}"]))]
            means.append(np.mean(vals) if vals else np.nan)
            stds.append(np.std(vals) if len(vals) > 1 else 0.0)
        ax.bar(np.arange(len(metrics)) + i * width, means, width, yerr=stds, capsize=3, color=colors[name], label=name)
    seeds = len({r["seed"] for r in rows})
    ax.set_xticks(np.arange(len(metrics)) + width * (len(shown) - 1) / 2, metrics)
    ax.set_ylabel("|metric - retrain's metric| (fraction)")
    ax.set_xlabel("metric")
    ax.set_title(f"Gap to the retrained model per metric (lower is closer to exact unlearning; "
                 f"mean ± std over {seeds} seed(s))")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, covering none
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
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, out / "cost_vs_quality.png")


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_all(run_dir: str | Path) -> list[Path]:
    """Draw every figure of a comparison folder into ``run_dir/plots``; returns the files written."""
    run_dir = Path(run_dir)
    rows = read_summary(run_dir)
    names = list(dict.fromkeys(r["strategy"] for r in rows if r["strategy"] != "original"))
    scratch = {r["strategy"] for r in rows if r.get("from_scratch") == "True"} or {"retrain"}
    seed_dir = sorted(run_dir.glob("seed-*"))[0]
    out = run_dir / "plots"
    backdoor = _has_backdoor(rows)
    drawn = [accuracy_over_rounds(out, seed_dir, names, scratch, backdoor), relearning_curves(out, seed_dir, rows),
             gaps_to_retrain(out, rows, names, scratch), cost_vs_quality(out, rows, names, backdoor)]
    return [p for p in drawn if p is not None]
