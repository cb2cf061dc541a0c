"""A sweep: the same comparison at every combination of the values the experiment's ``[sweep]`` lists.

    [sweep]
    "model.dilution.sparsity" = [0, 0.5, 0.8]
    "model.dilution.mode" = ["early", "late"]

Every point is the experiment with those keys set (as ``--set`` would) and ``sweep`` emptied,
checked before anything runs, and compared in its own folder ``OUT/<key>=<value>,...`` (resumable
like any comparison, reused while its settings match). ``OUT/sweep.csv`` holds every point's
summary rows with a column per swept key; :func:`fedunlearn.report.plots.sweep_plot` draws it.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from fedunlearn.config import ExperimentConfig
from fedunlearn.flower.runtime import Federation
from fedunlearn.io import atomic_write_text
from fedunlearn.parts import load_experiment
from fedunlearn.phases.compare import check_comparison, compare, fmt
from fedunlearn.report.report import read_summary
from fedunlearn.results import csv_text


def literal(value: Any) -> str:
    """``value`` as a TOML literal for an override (JSON's spelling of strings, numbers and booleans is TOML's)."""
    return json.dumps(value)


def point_name(point: dict[str, Any]) -> str:
    """A point's folder name: ``key=value`` pairs in the sweep's order."""
    return ",".join(f"{k}={v}" for k, v in point.items()).replace("/", "_")  # a path value stays one folder


def sweep_points(sweep: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the swept values, the first key varying slowest."""
    return [dict(zip(sweep, values, strict=True)) for values in itertools.product(*sweep.values())]


def point_configs(path: str | Path, overrides: list[str], cfg: ExperimentConfig,
                  seeds: int) -> list[tuple[dict[str, Any], ExperimentConfig]]:
    """Each point's experiment, loaded and checked as ``fedunlearn run`` checks one (ConfigError if any is bad)."""
    out = []
    for point in sweep_points(cfg.sweep):
        extra = [f"{k}={literal(v)}" for k, v in point.items()] + ["sweep={}"]
        point_cfg = load_experiment(path, [*overrides, *extra])
        check_comparison(point_cfg, seeds)
        out.append((point, point_cfg))
    return out


def run_sweep(fed: Federation, points: list[tuple[dict[str, Any], ExperimentConfig]], out: Path, seeds: int,
              log=print) -> list[dict]:
    """Compare every point into ``out/<point>``; ``out/sweep.csv`` is rewritten after each point."""
    rows: list[dict] = []
    for i, (point, cfg) in enumerate(points, start=1):
        folder = out / point_name(point)
        log(f"[sweep {i}/{len(points)}] {point_name(point)} -> {folder}")
        compare(fed, cfg, folder, seeds, log=log)
        rows += [{**{f"sweep:{k}": v for k, v in point.items()}, **r} for r in read_summary(folder)]
        columns = list(dict.fromkeys(k for r in rows for k in r))
        atomic_write_text(out / "sweep.csv", csv_text([{k: fmt(r.get(k, "")) for k in columns} for r in rows],
                                                      columns))
    return rows
