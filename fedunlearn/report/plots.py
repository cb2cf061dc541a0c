"""The comparison's figures, drawn from the files a run left in its folder.

* ``accuracy_over_rounds.png``: test accuracy and forget metric through training, unlearning and
  recovery, one line per strategy, the forget request marked;
* ``relearning_curves.png``: the probe's forget metric per probe round (or step), with the threshold;

both draw every seed (thin lines) and their mean (thick), and say so in their titles;
* ``gaps_to_retrain.png``: |metric − retrain's| per metric and strategy, and the Average Gap, mean
  over seeds ± std;
* ``cost_vs_quality.png``: client-epochs against the forgetting gap, one point per strategy;
* ``step_sweep.png`` (when entries of one strategy differ in one numeric setting, ``pga@lr=0.01``,
  ``pga@lr=0.1``): the relative weight distance to retrain against that setting, the step sizes in
  one panel and every other swept setting (``epochs``) in its own, the original's distance as a
  horizontal line (docs/methods.md, "Ascent fails").
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as ticker  # noqa: E402
import numpy as np  # noqa: E402

from fedunlearn.report.report import read_summary  # noqa: E402
from fedunlearn.results import read_csv  # noqa: E402

GAP_METRICS = ["test_acc", "retain_acc", "forget_acc", "forget_test_acc", "kept_acc", "mia_efficacy", "mia_yeom",
               "mia_nn", "backdoor_asr"]
GENERATIVE_GAP_METRICS = ["test_ll", "retain_ll", "forget_ll", "kept_ll", "forget_test_ll", "forget_gap"]  # nats
AVERAGE_GAP_BAR = ("Average Gap", "avg_gap")  # mean |gap| of UA, MIA-efficacy, RA and TA
ROUND_METRICS = {  # a task's per-round metric -> (panel label, unit, bounded in [0, 1])
    "test_acc": ("test accuracy", "fraction", True),
    "forget_acc": ("forget accuracy (forgotten clients' train data)", "fraction", True),
    "backdoor_asr": ("backdoor attack success rate", "fraction", True),
    "test_ll": ("test log-likelihood (remaining classes)", "nats per sample", False),
    "forget_ll": ("forget log-likelihood (the forget set)", "nats per sample", False),
    "forget_gap": ("forget gap LL(forget) - LL(test)", "nats per sample", False),
}


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


def pruning_round(run_dir: Path) -> int | None:
    """The round after which a late dilution pruned the model (docs/methods.md, "Dilution"): the cliff the
    metrics figure marks. None for a dense or early-diluted model, or a folder without a readable config.toml
    (a comparison written by another ServerApp)."""
    from fedunlearn.config import load_config
    from fedunlearn.dilution import prune_round
    from fedunlearn.settings import ConfigError

    try:
        cfg = load_config(run_dir / "config.toml")
    except (ConfigError, OSError):
        return None
    late = cfg.model.dilution.active and cfg.model.dilution.mode == "late"
    return prune_round(cfg) if late else None


def metrics_over_rounds(out: Path, seed_dirs: list[Path], names: list[str], scratch: set[str],
                        pruned: int | None = None) -> Path:
    """The task's per-round metrics (rounds.csv, trajectory.csv) through training, unlearning and recovery:
    ``accuracy_over_rounds.png`` for a classifier, ``likelihood_over_rounds.png`` for the generative task;
    ``pruned``: the round after which a late dilution pruned the model, marked."""
    trains = [read_csv(d / "train" / "rounds.csv") for d in seed_dirs]
    panels = [k for k in ROUND_METRICS if k in trains[0][0] and any(not math.isnan(_f(r[k])) for r in trains[0])]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 3.2 * len(panels)), sharex=True, squeeze=False)
    axes = axes[:, 0]
    colors = _colors(["original"] + names)
    forget_round = max(int(r["round"]) for r in trains[0])
    for ax, key in zip(axes, panels, strict=True):
        label, unit, bounded = ROUND_METRICS[key]
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
        if pruned is not None:
            ax.axvline(pruned, color="grey", ls="--", lw=1)
            ax.text(pruned, 0.12, " pruned (late dilution)", transform=ax.get_xaxis_transform(), fontsize=8,
                    color="dimgrey")
        ax.set_ylabel(f"{label.split(' (')[0]}\n({unit})")
        if bounded:
            ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    what = "Accuracy" if "test_acc" in panels else "Log-likelihood"
    axes[0].set_title(f"{what} through training, unlearning and recovery ({_seeds_note(seed_dirs)})")
    axes[-1].set_xlabel("round (training, then each strategy's unlearning and recovery rounds)")
    axes[-1].xaxis.set_major_locator(ticker.MaxNLocator(integer=True))  # rounds are counts (shared x)
    _legend_outside(fig, axes[0])
    return _save(fig, out / f"{'accuracy' if 'test_acc' in panels else 'likelihood'}_over_rounds.png")


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
        ax.set_title(f"Relearning the forgotten data: mode '{mode}' ({_seeds_note(seed_dirs)})", fontsize=10)
        if not any(not math.isnan(y) for seed_curves in curves.values() for c in seed_curves for _, y in c):
            _not_measurable(ax, data[0].get("metric", "") if data else "")
            continue
        colors = _colors(list(curves))
        for name, seed_curves in curves.items():
            _draw_seeds(ax, seed_curves, colors[name], curve_label(name, " / ".join(delays[name])), marker="o")
        ax.axhline(float(np.mean(thresholds)), color="black", ls=":", lw=1,
                   label="threshold: original's value x (1 -/+ alpha)" + (", mean over seeds" if len(thresholds) > 1 else ""))
        unit, metric = data[0]["unit"], data[0].get("metric", "")
        ax.set_xlabel(f"probe {unit} ({'FedAvg rounds, forgotten clients re-added' if unit == 'rounds' else 'local SGD steps of the forgotten clients alone'})")
        if metric == "forget_loss":
            ax.set_ylabel("forget loss (mean cross-entropy, nats)")
        elif metric == "forget_ll":
            ax.set_ylabel("normalised forget log-likelihood r\n(0 = retrain, 1 = original)")
        else:
            names = {"backdoor": "backdoor attack success rate", "forget_acc": "forget accuracy"}
            ax.set_ylabel(f"{names.get(metric, 'forget metric')} (fraction)")
            ax.set_ylim(-0.02, 1.02)
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))  # probe rounds and steps are counts
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: covers nothing
    return _save(fig, out / "relearning_curves.png")


def _not_measurable(ax, metric: str) -> None:
    """An empty probe panel says why instead of drawing axes around nothing: every curve is n/a
    (docs/methods.md, "Generative task": r is undefined when the original's forget log-likelihood is
    not above retrain's by probe.alpha, so there is nothing to relearn)."""
    ax.set_axis_off()
    ax.text(0.5, 0.5, f"{metric or 'forget metric'}: n/a on every seed (not measurable)\n"
            "the original and retrain do not differ by probe.alpha on the forget set,\n"
            "so there is nothing to relearn and no delay to draw", ha="center", va="center",
            transform=ax.transAxes, fontsize=9)


def gaps_to_retrain(out: Path, rows: list[dict], names: list[str], scratch: set[str]) -> Path | None:
    """|metric − retrain's| per metric and strategy; None when no row has a gap (no retrained reference:
    a ``fedunlearn forget`` folder), rather than empty axes."""
    bars = [(m, f"gap_{m}") for m in GAP_METRICS] + [AVERAGE_GAP_BAR]
    bars = [(label, col) for label, col in bars if any(not math.isnan(_f(r.get(col))) for r in rows)]
    unit = "fraction"
    if not bars:  # the generative task: log-likelihood gaps
        bars = [(m, f"gap_{m}") for m in GENERATIVE_GAP_METRICS
                if any(not math.isnan(_f(r.get(f"gap_{m}"))) for r in rows)]
        unit = "nats per sample"
    if not bars:
        return None
    shown = ["original"] + [n for n in names if n not in scratch]
    colors = _colors(["original"] + names)
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / len(shown)
    for i, name in enumerate(shown):
        means, stds = [], []
        for _, col in bars:
            vals = [_f(r.get(col)) for r in rows if r["strategy"] == name and not math.isnan(_f(r.get(col)))]
            means.append(np.mean(vals) if vals else np.nan)
            stds.append(np.std(vals, ddof=1) if len(vals) > 1 else 0.0)  # the sample std, as report.md's
        seeds = len({r["seed"] for r in rows})
        below = [min(s, m) if m == m else 0.0 for m, s in zip(means, stds, strict=True)]  # a gap is >= 0
        ax.bar(np.arange(len(bars)) + i * width, means, width, yerr=[below, stds] if seeds > 1 else None,
               capsize=3, color=colors[name], label=name)
    ax.set_xticks(np.arange(len(bars)) + width * (len(shown) - 1) / 2, [label for label, _ in bars],
                  rotation=20, ha="right")
    ax.set_ylabel(f"|metric - retrain's metric| ({unit})")
    ax.set_xlabel("metric")
    spread = f"mean ± sample std over {seeds} seeds" if seeds > 1 else "1 seed"
    ax.set_title(f"Gap to the retrained model per metric (lower is closer to exact unlearning; {spread})")
    ax.grid(axis="y", alpha=0.3)
    _legend_outside(fig, ax)
    return _save(fig, out / "gaps_to_retrain.png")


def cost_vs_quality(out: Path, rows: list[dict], names: list[str], backdoor: bool) -> Path | None:
    """Client-epochs against the forget metric's gap to retrain; None when no row has that gap.

    A ``fedunlearn forget`` folder holds no retrained model, so it has no gaps to draw.
    """
    keys = ["backdoor_asr" if backdoor else "forget_acc", "forget_ll"]  # forget_ll: the generative task
    key = next((k for k in keys if any(not math.isnan(_f(r.get(f"gap_{k}"))) for r in rows)), None)
    if key is None:
        return None
    colors = _colors(["original"] + names)
    fig, ax = plt.subplots(figsize=(9.5, 5))
    for name in names:
        mine = [r for r in rows if r["strategy"] == name]
        cost = np.mean([_f(r["client_epochs"]) for r in mine])
        gap = np.mean([_f(r.get(f"gap_{key}")) for r in mine])
        ax.scatter(cost, gap, s=60, color=colors[name], label=name, zorder=3)
    ax.set_xlabel("cost: client-epochs spent on forgetting (and recovery)")
    ax.set_ylabel(f"|{key} - retrain's {key}| ({ROUND_METRICS[key][1]})")
    ax.set_title("Cost against forgetting quality (lower left is better; mean over seeds)")
    ax.grid(alpha=0.3)
    _legend_outside(fig, ax)
    return _save(fig, out / "cost_vs_quality.png")


SWEEP_METRIC = "weight_dist_to_retrain"  # ‖w − w_retrain‖ / ‖w_retrain‖


@dataclass
class SweepLine:
    """Entries of one strategy that differ only in the numeric setting ``key``: one line of ``step_sweep.png``.

    ``fixed`` holds the entries' other settings (``distance_threshold=1e9``), ``name`` the legend
    stem (the labels' common part before ``@``, else the strategy), ``points`` x -> [(seed, y)].
    """

    strategy: str
    key: str
    fixed: tuple[tuple[str, str], ...]
    step: bool
    name: str = ""
    points: dict[float, list[tuple[str, float]]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        extra = ", ".join(f"{k}={_short(v)}" for k, v in self.fixed)
        return f"{self.name} ({self.key}{'; ' + extra if extra else ''})"


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``NAME@key=value,...`` (summary.csv's ``spec``) as (NAME, {key: value as written})."""
    from fedunlearn.strategies import split_spec

    name, items = split_spec(spec)
    return name, {key.strip(): value.strip() for key, _, value in (item.partition("=") for item in items)}


def _short(value: str) -> str:
    """A setting's value as written, a number in its shortest form (``1e+09``)."""
    x = _number(value)
    return value.strip('"') if x is None else f"{x:g}"


def _number(value: str) -> float | None:
    try:
        x = float(value)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def registry_step_keys(strategy: str) -> set[str]:
    """The settings that scale ``strategy``'s step (``step_settings`` of its parts), bare and dotted."""
    from fedunlearn.settings import ConfigError
    from fedunlearn.strategies import spec_parts

    try:
        parts = spec_parts(strategy)
    except ConfigError:  # a part no longer known or importable: no step settings known
        return set()
    keys = set()
    for p in parts:
        for k in getattr(p.obj, "step_settings", ()):
            keys |= {k, f"{p.name}.{k}"}
    return keys


def sweep_lines(rows: list[dict], step_keys: Callable[[str], set[str]] = registry_step_keys,
                metric: str = SWEEP_METRIC) -> list[SweepLine]:
    """The sweeps in summary rows: per strategy, numeric setting and the entries' other settings.

    A row belongs to the sweep of each numeric setting its ``spec`` writes after ``@``; a sweep is
    kept when it holds at least two values. Rows without a number in ``metric`` are left out.
    """
    lines: dict[tuple, SweepLine] = {}
    stems: dict[tuple, set[str]] = defaultdict(set)
    for r in rows:
        if r.get("strategy") == "original" or "@" not in str(r.get("spec", "")):
            continue
        y = _f(r.get(metric))
        if math.isnan(y):
            continue
        name, settings = parse_spec(r["spec"])
        for key, value in settings.items():
            x = _number(value)
            if x is None:
                continue
            fixed = tuple(sorted((k, v) for k, v in settings.items() if k != key))
            ident = (name, key, fixed)
            line = lines.setdefault(ident, SweepLine(name, key, fixed, key in step_keys(name)))
            line.points.setdefault(x, []).append((str(r.get("seed", "")), y))
            stems[ident].add(str(r["strategy"]).partition("@")[0])
    kept = []
    for ident, line in lines.items():
        if len(line.points) >= 2:
            stem = stems[ident]
            line.name = stem.pop() if len(stem) == 1 else line.strategy
            line.points = dict(sorted(line.points.items()))
            kept.append(line)
    return kept


def _sweep_scale(values: list[float]) -> str:
    positive = [v for v in values if v > 0]
    return "log" if len(positive) == len(values) and max(positive) >= 10 * min(positive) else "linear"


def step_sweep(out: Path, rows: list[dict]) -> Path | None:
    """The relative weight distance to retrain against each swept setting (None: no sweep in ``rows``)."""
    lines = sweep_lines(rows)
    if not lines:
        return None
    panels: dict[str, list[SweepLine]] = defaultdict(list)
    for line in lines:
        panels["step size" if line.step else line.key].append(line)
    original = [_f(r.get(SWEEP_METRIC)) for r in rows if r.get("strategy") == "original"]
    original = [v for v in original if not math.isnan(v)]
    seeds = len({r["seed"] for r in rows})
    colors = _colors(list(dict.fromkeys(line.name for line in lines)))
    styles, markers = ["-", "--", "-.", ":"], ["o", "s", "^", "D", "v"]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9.5, 4.3 * len(panels)), squeeze=False)
    for ax, (panel, mine) in zip(axes[:, 0], panels.items(), strict=True):
        xs_all, ys_all = [], []
        for i, line in enumerate(mine):  # each line its own dashes and marker: equal values stay visible
            per_seed = defaultdict(list)
            for x, pts in line.points.items():
                for seed, y in pts:
                    per_seed[seed].append((x, y))
            _draw_seeds(ax, list(per_seed.values()), colors[line.name], line.label, ls=styles[i % len(styles)],
                        marker=markers[i % len(markers)])
            xs_all += list(line.points)
            ys_all += [y for pts in line.points.values() for _, y in pts]
        if original:
            ax.axhline(float(np.mean(original)), color="black", ls=":", lw=1.5,
                       label="original (not unlearnt)" + (", mean over seeds" if len(original) > 1 else ""))
            if len(original) > 1:
                ax.axhspan(min(original), max(original), color="grey", alpha=0.15, lw=0,
                           label="original, range over seeds")
            ys_all += original
        ax.set_xscale(_sweep_scale(xs_all))
        ax.set_yscale(_sweep_scale(ys_all))
        log = ", log scale" if ax.get_xscale() == "log" else ""
        if panel == "step size":
            what = ", ".join(dict.fromkeys(f"{line.strategy} {line.key}" for line in mine))
            ax.set_xlabel(f"step size: {what} (dimensionless{log})")
        else:
            unit = "count" if all(float(x).is_integer() for x in xs_all) else "value of the setting"
            ax.set_xlabel(f"{panel} of {', '.join(dict.fromkeys(line.strategy for line in mine))} ({unit}{log})")
        ax.set_ylabel("||w - w_retrain|| / ||w_retrain||\n(relative L2 distance" +
                      (", log scale)" if ax.get_yscale() == "log" else ")"))
        ax.set_title(f"Distance to the retrained model against the {panel} "
                     f"({'mean over ' + str(seeds) + ' seeds, thin lines each seed' if seeds > 1 else '1 seed'})",
                     fontsize=10)
        for axis, values in ((ax.xaxis, xs_all), (ax.yaxis, ys_all)):  # plain numbers (0.03, 300), not 10^k
            axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            if axis.get_scale() == "log" and max(values) <= 300 * min(values):  # room for minors 2 and 5
                axis.set_minor_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
            elif axis.get_scale() == "log":
                axis.set_minor_formatter(ticker.NullFormatter())
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: covers nothing
    return _save(fig, out / "step_sweep.png")


def _legend_outside(fig, ax) -> None:
    """The legend of ``ax``'s lines to the right of every axes, where it covers no data or label."""
    fig.legend(*ax.get_legend_handles_labels(), fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 0.98),
               bbox_transform=fig.transFigure)


def generated_samples(out: Path, seed_dir: Path, shown: int = 36) -> Path:
    """The generative task's first figure: per model, a grid of generated samples beside the class histogram
    the auxiliary classifier gives all of them (``seed-S/samples.npz``, written by the comparison)."""
    with np.load(seed_dir / "samples.npz") as z:
        arrays = {k: z[k] for k in z.files}
    forgotten = set(arrays.pop("forget_classes", np.zeros(0, np.int64)).tolist())
    # the data set's classes (a file written before they were saved: those any label or request names)
    classes = int(arrays.pop("num_classes", 1 + max([*forgotten, *(int(v.max()) for k, v in arrays.items()
                                                                   if k.endswith("/labels") and v.size)])))
    models = list(dict.fromkeys(k.split("/")[0] for k in arrays))
    side = int(math.ceil(math.sqrt(shown)))
    fig, axes = plt.subplots(len(models), 2, figsize=(8.5, 2.6 * len(models)), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1.6]})
    for (ax_img, ax_hist), name in zip(axes, models, strict=True):
        images, labels = arrays[f"{name}/images"], arrays[f"{name}/labels"]
        if images.ndim == 2:  # flat features: drawn as the squarest grid of them
            h = next(d for d in range(int(math.isqrt(images.shape[1])), 0, -1) if images.shape[1] % d == 0)
            images = images.reshape(len(images), h, images.shape[1] // h)
        h, w = images.shape[-2:]
        grid = np.full((side * (h + 1), side * (w + 1)), 0.3)  # grey gaps: black would merge with the ink
        for i, img in enumerate(images[:side * side]):
            r, c = divmod(i, side)
            grid[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = img.reshape(h, w)
        ax_img.imshow(grid, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        ax_img.set_xticks([])
        ax_img.set_yticks([])
        ax_img.set_ylabel(name, fontsize=9)
        counts = np.bincount(labels, minlength=classes) / len(labels)
        ax_hist.bar(np.arange(len(counts)), counts,
                    color=["tab:red" if c in forgotten else "tab:blue" for c in range(len(counts))])
        ax_hist.set_xticks(np.arange(len(counts)))
        ax_hist.set_ylim(0, 1)
        ax_hist.set_ylabel("share of samples")
        ax_hist.grid(axis="y", alpha=0.3)
    axes[0, 0].set_title(f"{min(shown, len(images))} of {len(images)} generated samples", fontsize=9)
    axes[0, 1].set_title("class of every generated sample (auxiliary classifier)"
                         + ("; forgotten class(es) in red" if forgotten else ""), fontsize=9)
    axes[-1, 1].set_xlabel("class")
    fig.suptitle(f"Generated samples per model ({seed_dir.name}; Gibbs chains from random states: a picture, "
                 "not the headline)", fontsize=10, y=1.0, va="bottom")
    return _save(fig, out / "generated_samples.png")


SWEEP_PANELS = {  # the task's panels of sweep.png: quality, distance of forgetting to retrain, relearning
    "generative": [("test_ll", "test log-likelihood (nats per sample)"),
                   ("gap_forget_ll", "|forget LL - retrain's| (nats per sample)"),
                   ("relearn_delay", "relearning delay (probe rounds)")],
    "classification": [("test_acc", "test accuracy (fraction)"), ("avg_gap", "Average Gap to retrain (fraction)"),
                       ("relearn_delay", "relearning delay (probe rounds)")],
}


def _delay(value: str) -> float:
    """A delay cell as a number; a censored one ("> 10") at its cap."""
    return _f(str(value).removeprefix("> "))


def sweep_plot(run_dir: str | Path) -> Path:
    """``plots/sweep.png`` of a sweep folder: per panel, the mean over seeds of each strategy against the first
    numeric swept key, one line style per combination of the other swept keys."""
    run_dir = Path(run_dir)
    rows = read_csv(run_dir / "sweep.csv")
    keys = [k for k in rows[0] if k.startswith("sweep:")]
    numeric = [k for k in keys if all(_number(r[k]) is not None for r in rows)]
    if not numeric:
        raise ValueError(f"{run_dir}/sweep.csv: no numeric swept key to draw against")
    x_key, others = numeric[0], [k for k in keys if k != numeric[0]]
    task = "generative" if any(not math.isnan(_f(r.get("test_ll"))) for r in rows) else "classification"
    panels = SWEEP_PANELS[task]
    names = list(dict.fromkeys(r["strategy"] for r in rows))
    combos = list(dict.fromkeys(tuple(r[k] for k in others) for r in rows))
    colors, styles = _colors(names), ["-", "--", ":", "-."]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.4), squeeze=False)
    for ax, (column, label) in zip(axes[0], panels, strict=True):
        for name in names:
            for j, combo in enumerate(combos):
                by_x = defaultdict(list)
                for r in rows:
                    if r["strategy"] == name and tuple(r[k] for k in others) == combo:
                        y = _delay(r.get(column, "")) if column == "relearn_delay" else _f(r.get(column))
                        if not math.isnan(y):
                            by_x[float(r[x_key])].append(y)
                if not by_x:
                    continue
                xs = sorted(by_x)
                tag = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in zip(others, combo, strict=True))
                ax.plot(xs, [np.mean(by_x[x]) for x in xs], color=colors[name], ls=styles[j % len(styles)],
                        marker="o", ms=3, label=f"{name}{' (' + tag + ')' if tag else ''}")
        ax.set_xlabel(x_key.removeprefix("sweep:"))
        ax.set_ylabel(label)
        if column == "relearn_delay":  # a count of probe rounds
            ax.yaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        ax.set_title(label.split(" (")[0], fontsize=10)
        ax.grid(alpha=0.3)
    seeds = len({r["seed"] for r in rows})
    fig.suptitle(f"Sweep of {x_key.removeprefix('sweep:')} (mean over {seeds} seed(s); censored delays at their cap)",
                 fontsize=11)
    _legend_outside(fig, axes[0, -1])
    return _save(fig, run_dir / "plots" / "sweep.png")


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
    drawn = [metrics_over_rounds(out, seed_dirs, names, scratch, pruning_round(run_dir)) if trained else None,
             relearning_curves(out, seed_dirs, rows), gaps_to_retrain(out, rows, names, scratch),
             cost_vs_quality(out, rows, names, backdoor) if costed else None, step_sweep(out, rows),
             generated_samples(out, seed_dirs[0]) if seed_dirs and (seed_dirs[0] / "samples.npz").exists() else None]
    return [p for p in drawn if p is not None]
