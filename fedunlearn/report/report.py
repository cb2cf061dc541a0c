"""report.md: the summary table (mean ± std over seeds) and the figures of a comparison folder."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from fedunlearn.io import atomic_write_text
from fedunlearn.results import read_csv
from fedunlearn.settings import ConfigError

TABLE = ["test_acc", "retain_acc", "forget_acc", "mia_efficacy", "backdoor_asr", "weight_dist_to_retrain",
         "pred_kl_to_retrain", "recovery_rounds", "relearn_delay", "relearn_ratio_to_retrain", "relearn_auc",
         "client_epochs", "wall_s"]


def _cell(values: list[str]) -> str:
    nums = []
    for v in values:
        try:
            nums.append(float(v))
        except ValueError:
            return " / ".join(dict.fromkeys(v for v in values if v)) or ""
    nums = [n for n in nums if not math.isnan(n)]
    if not nums:
        return ""
    return f"{np.mean(nums):.3g}" + (f" ± {np.std(nums):.2g}" if len(nums) > 1 else "")


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


def write_report(run_dir: str | Path, plots: list[Path]) -> Path:
    run_dir = Path(run_dir)
    rows = read_summary(run_dir)
    by = defaultdict(list)
    for r in rows:
        by[r["strategy"]].append(r)
    columns = [c for c in TABLE if c in rows[0] and any(r[c] for r in rows)]
    seeds = sorted({r["seed"] for r in rows})
    lines = [f"# Unlearning comparison: {run_dir.name}", "",
             f"Seeds: {', '.join(seeds)}. Cells are mean ± std over seeds; text cells list the values seen. "
             "Every metric is meant to be read against `retrain` (exact unlearning): the `gap_` columns of "
             "summary.csv hold |metric − retrain's|. A relearning delay `> R` is censored (the threshold was "
             "never reached in R probe rounds); ratios with a censored side are bounds.", "",
             "| strategy | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, mine in by.items():
        lines.append(f"| {name} | " + " | ".join(_cell([r[c] for r in mine]) for c in columns) + " |")
    lines.append("")
    for p in plots:
        lines += [f"![{p.stem}](plots/{p.name})", ""]
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
