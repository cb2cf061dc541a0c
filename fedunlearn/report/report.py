"""report.md: the summary table (mean ± std over seeds) and the figures of a comparison folder."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedunlearn.config import load_config
from fedunlearn.io import atomic_write_text
from fedunlearn.report.table import markdown_table
from fedunlearn.results import read_csv
from fedunlearn.settings import ConfigError
from fedunlearn.tasks import task_of

TABLE = ["test_acc", "retain_acc", "forget_acc", "forget_test_acc", "kept_acc", "mia_efficacy", "mia_nn",
         "backdoor_asr", "test_ll", "forget_ll", "gap_forget_ll", "forget_gap", "free_energy_gap", "gen_forget_share",
         "avg_gap", "weight_dist_to_retrain", "pred_kl_to_retrain", "recovery_rounds", "relearn_delay",
         "relearn_ratio_to_retrain", "relearn_auc", "client_epochs", "wall_s"]


# Columns whose value is a lower bound in some rows: the column saying so, or None when the value
# itself says it ("> R", a censored relearning delay).
CENSORED_BY = {"recovery_rounds": "recovery_censored", "relearn_delay": None, "relearn_alone_delay": None}


@dataclass
class SeedValue:
    """One seed's value of a column: a number (a lower bound when ``censored``) or a text."""

    number: float | None
    censored: bool = False
    text: str = ""


def seed_value(row: dict, column: str) -> SeedValue:
    raw = str(row.get(column, "")).strip()
    if column in CENSORED_BY and raw.startswith(">"):
        return SeedValue(float(raw.lstrip("> ")), True, raw)
    flag = CENSORED_BY.get(column)
    try:
        number = float(raw)
    except ValueError:
        return SeedValue(None, False, raw)
    return SeedValue(number, bool(flag) and str(row.get(flag, "")) == "True", raw)


def mean_cell(rows: list[dict], column: str) -> str:
    """Mean ± sample standard deviation (n − 1) over the seeds' rows of one strategy.

    A censored value (a delay "> R", recovery that never reached its target) is only a lower
    bound: the mean is then shown as a bound, "> m", computed with the censored values at their
    caps, and no deviation is given. Text values (ratio bounds, notes) are listed per seed.
    """
    values = [seed_value(r, column) for r in rows]
    values = [v for v in values if v.number is None and v.text or v.number is not None and not math.isnan(v.number)]
    if not values:
        return ""
    if any(v.number is None for v in values):
        return " / ".join(v.text for v in values)
    numbers = [v.number for v in values]
    mean = float(np.mean(numbers))
    if any(v.censored for v in values):
        return f"> {mean:.3g}"
    return f"{mean:.3g}" + (f" ± {float(np.std(numbers, ddof=1)):.2g}" if len(numbers) > 1 else "")


def read_summary(run_dir: str | Path) -> list[dict]:
    """The rows of ``run_dir/summary.csv``, or ConfigError when the folder holds no results."""
    path = Path(run_dir) / "summary.csv"
    try:
        rows = read_csv(path) if path.is_file() else []
    except (OSError, UnicodeDecodeError, ValueError):
        rows = []
    if not rows or not {"strategy", "seed"} <= set(rows[0]):
        raise ConfigError(f"RUN_DIR: {run_dir} has no readable summary.csv; pass a folder written by `fedunlearn run`")
    return rows


@dataclass
class SummaryView:
    """What both reports show of summary.csv: the rows, grouped by strategy, the columns and the seeds."""

    rows: list[dict]
    by_strategy: dict[str, list[dict]]
    columns: list[str]
    seeds: list[str]

    @classmethod
    def of(cls, run_dir: Path) -> SummaryView:
        rows = read_summary(run_dir)
        by = defaultdict(list)
        for r in rows:
            by[r["strategy"]].append(r)
        columns = [c for c in TABLE if c in rows[0] and any(r[c] for r in rows)]
        return cls(rows, dict(by), columns, sorted({r["seed"] for r in rows}, key=int))


def task_notes(run_dir: Path) -> list[str]:
    """What the folder's task says of how its metrics were computed (none without a config.toml: a
    comparison written by anyone's ServerApp may have none)."""
    config = run_dir / "config.toml"
    if not config.exists():
        return []
    cfg = load_config(config)
    return task_of(cfg).report_notes(cfg)


def write_report(run_dir: str | Path, plots: list[Path]) -> Path:
    """``run_dir/report.md``: the mean ± std table over seeds, the per-seed table, and the plots."""
    run_dir = Path(run_dir)
    view = SummaryView.of(run_dir)
    rows, by, columns, seeds = view.rows, view.by_strategy, view.columns, view.seeds
    lines = [f"# Unlearning comparison: {run_dir.name}", "",
             "Every metric is meant to be read against `retrain` (exact unlearning): the `gap_` columns of "
             "summary.csv hold |metric − retrain's|. A relearning delay `> R` is censored (the threshold was "
             "never reached in R probe rounds); ratios with a censored side are bounds.", "",
             *[line for note in task_notes(run_dir) for line in (note, "")],
             f"## Mean ± standard deviation over {len(seeds)} seed(s) ({', '.join(seeds)})", "",
             "The deviation is the sample one (n − 1). Where a seed's value is censored (a relearning delay "
             "`> R`, recovery that never reached its target, retrain's validation or test score) the mean is a lower bound, shown `> m` "
             "with the censored values at their caps, without a deviation; text cells list each seed's value.", "",
             "| strategy | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, mine in by.items():
        lines.append(f"| {name} | " + " | ".join(mean_cell(mine, c) for c in columns) + " |")
    lines += ["", "## Every seed", "", "Each cell lists the seeds' values in seed order "
              f"({' / '.join(seeds)}).", "", markdown_table(rows, columns), ""]
    for p in plots:
        lines += [f"![{p.stem}](plots/{p.name})", ""]
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
