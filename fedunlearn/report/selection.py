"""Choosing IEU's decay λ and noise σ from a sweep's summary, on the validation split (docs/methods.md, "IEU").

The rule: per side (``server``, ``client``), among the ``+ieu`` entries of a comparison, keep those
whose mean validation score over seeds (accuracy; the generative task's log-likelihood, nats per
sample) is at least the reference's (retrain's) minus ``tolerance`` (0.01), and choose the one with the longest mean relearning delay
over seeds; a censored delay (``> R``: never relearnt within the probe's cap R) counts as R + 1.
Ties go to the lower mean relearning AUC (slower relearning), then to the cheaper entry (mean
client-epochs). Nothing here reads a test column: the sweep (``experiments/ieu_sweep.toml``)
stops recovery on validation accuracy and probes relearning on the forgotten client's own data.

    python -m fedunlearn.report.selection runs/ieu_sweep
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedunlearn.config import ForgettingConfig, load_config
from fedunlearn.report.report import read_summary
from fedunlearn.settings import ConfigError
from fedunlearn.strategies import strategy_spec
from fedunlearn.strategies.ieu import SIDES, IEUSettings

DELAY, AUC, COST = "relearn_delay", "relearn_auc", "client_epochs"
VALIDATION = ("val_acc", "val_ll")  # a classifier's validation accuracy, the generative task's log-likelihood


@dataclass
class Candidate:
    """One entry of the sweep, its settings and its means over seeds."""

    label: str
    side: str
    decay: float
    noise: float
    seeds: int
    delay: float  # mean relearning delay, a censored one counted as its cap + 1
    censored: int  # seeds whose delay was censored
    validation: float  # mean validation score (validation_column)
    auc: float
    client_epochs: float
    eligible: bool = False


def delay_value(raw) -> tuple[float, bool]:
    """A summary's relearning delay as (number, censored): ``> R`` is R + 1, censored."""
    text = "" if raw is None else str(raw).strip()
    if not text:
        raise ValueError(f"a row has no relearning delay ({DELAY}); run the sweep with probe.enabled = true")
    if text.startswith(">"):
        return float(text.lstrip("> ")) + 1, True
    return float(text), False


def _mean(values: Sequence[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def _number(raw) -> float:
    try:
        return float(raw)
    except (TypeError, ValueError):
        return float("nan")


def validation_column(rows: list[dict]) -> str:
    """The validation score the rows hold (both are higher-is-better): ``val_acc``, or ``val_ll`` on the
    generative task; ``val_acc`` when neither is filled (no split held out)."""
    return next((c for c in VALIDATION if any(not math.isnan(_number(r.get(c))) for r in rows)), VALIDATION[0])


def ieu_settings(spec: str, forgetting: ForgettingConfig) -> IEUSettings | None:
    """The IEU settings of a summary row's ``spec`` (None when it has no IEU wrapper)."""
    try:
        resolved = strategy_spec(spec, forgetting)
    except ConfigError:
        return None
    return next((s for s in resolved.settings if isinstance(s, IEUSettings)), None)


def candidates(rows: list[dict], forgetting: ForgettingConfig | None = None, reference: str = "retrain",
               tolerance: float = 0.01) -> tuple[list[Candidate], float]:
    """Every IEU entry of ``rows`` (summary rows) with its means, and the validation bar it must meet.

    The bar is the reference's mean validation score (:func:`validation_column`) minus ``tolerance``.
    Raises ValueError when the rows hold none (the sweep needs ``data.validation`` > 0).
    """
    forgetting = forgetting or ForgettingConfig()
    column = validation_column(rows)
    ref = [_number(r.get(column)) for r in rows if r["strategy"] == reference]
    bar = _mean(ref) - tolerance
    if math.isnan(bar):
        raise ValueError(f"no {' or '.join(VALIDATION)} for {reference!r}: the selection reads the validation "
                         "split, so the sweep needs data.validation > 0")
    out = []
    for label in dict.fromkeys(r["strategy"] for r in rows):
        mine = [r for r in rows if r["strategy"] == label]
        settings = ieu_settings(str(mine[0].get("spec") or label), forgetting)
        if settings is None:
            continue
        delays = [delay_value(r.get(DELAY)) for r in mine]
        c = Candidate(label, settings.side, settings.decay, settings.noise, len(mine), _mean([d for d, _ in delays]),
                      sum(c for _, c in delays), _mean([_number(r.get(column)) for r in mine]),
                      _mean([_number(r.get(AUC)) for r in mine]), _mean([_number(r.get(COST)) for r in mine]))
        c.eligible = c.validation >= bar
        out.append(c)
    return out, bar


def select(rows: list[dict], forgetting: ForgettingConfig | None = None, reference: str = "retrain",
           tolerance: float = 0.01) -> dict[str, Candidate | None]:
    """Per side, the eligible entry with the longest mean delay (ties: lower AUC, then fewer client-epochs)."""
    found, _ = candidates(rows, forgetting, reference, tolerance)
    chosen: dict[str, Candidate | None] = {}
    for side in SIDES:
        pool = [c for c in found if c.side == side and c.eligible]
        chosen[side] = min(pool, key=lambda c: (-c.delay, c.auc, c.client_epochs)) if pool else None
    return chosen


def _cell(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def selection_table(rows: list[dict], forgetting: ForgettingConfig | None = None, reference: str = "retrain",
                    tolerance: float = 0.01, baselines: Sequence[str] = ("retrain", "puf")) -> str:
    """The sweep as a Markdown table (means over seeds), the chosen entry of each side marked."""
    found, bar = candidates(rows, forgetting, reference, tolerance)
    column = validation_column(rows)
    chosen = {c.label for c in select(rows, forgetting, reference, tolerance).values() if c is not None}
    lines = [f"| entry | side | λ | σ | mean delay (censored) | mean {column} | eligible | mean AUC | mean client-epochs |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in baselines:
        mine = [r for r in rows if r["strategy"] == name]
        if mine:
            delays = [delay_value(r.get(DELAY)) for r in mine]
            lines.append(f"| {name} |  |  |  | {_cell(_mean([d for d, _ in delays]))} ({sum(c for _, c in delays)}/"
                         f"{len(mine)}) | {_cell(_mean([_number(r.get(column)) for r in mine]))} |  | "
                         f"{_cell(_mean([_number(r.get(AUC)) for r in mine]))} | "
                         f"{_cell(_mean([_number(r.get(COST)) for r in mine]))} |")
    for c in found:
        mark = "**" if c.label in chosen else ""
        lines.append(f"| {mark}{c.label}{mark} | {c.side} | {c.decay:g} | {c.noise:g} | {_cell(c.delay)} "
                     f"({c.censored}/{c.seeds}) | {_cell(c.validation)} | {'yes' if c.eligible else 'no'} | "
                     f"{_cell(c.auc)} | {_cell(c.client_epochs)} |")
    return "\n".join(lines) + f"\n\nBar: mean {column} >= {reference}'s - {tolerance:g} = {bar:.3f}; a censored delay " \
        "counts as its cap + 1; chosen in bold."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedunlearn.report.selection",
                                     description="choose IEU's decay and noise per side from a sweep's summary.csv")
    parser.add_argument("run_dir", help="a folder written by `fedunlearn run` (e.g. of experiments/ieu_sweep.toml)")
    parser.add_argument("--tolerance", type=float, default=0.01, help="validation score below retrain's allowed "
                                                                      "(val_acc: fraction; val_ll: nats per sample)")
    parser.add_argument("--reference", default="retrain", help="the row whose validation score is the bar")
    args = parser.parse_args(argv)
    run = Path(args.run_dir)
    try:
        rows = read_summary(run)
        forgetting = load_config(run / "config.toml").forgetting if (run / "config.toml").exists() else None
        print(selection_table(rows, forgetting, args.reference, args.tolerance))
        for side, c in select(rows, forgetting, args.reference, args.tolerance).items():
            print(f"{side}: " + (f"{c.label} (decay {c.decay:g}, noise {c.noise:g}, mean delay {c.delay:.2f})"
                                 if c else "no entry meets the validation bar"))
    except (ConfigError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
