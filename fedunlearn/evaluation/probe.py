"""The relearning-delay arithmetic: threshold, delay, censoring, ratio to retrain, area under the curve.

A curve is the forget metric before any probe round (index 0) and after each round (or SGD step)
1..cap. The delay is the first index whose value reaches the threshold τ = (1 − α)·original's
value (≤ (1 + α)·original's for a loss); a curve that never reaches it is censored ("> cap"),
never reported as the cap. The original model's delay is 0 by construction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LOSS_METRICS = {"forget_loss"}


def threshold(metric: str, original_value: float, alpha: float) -> float:
    return original_value * (1 + alpha) if metric in LOSS_METRICS else original_value * (1 - alpha)


def reaches(metric: str, value: float, tau: float) -> bool:
    return value <= tau if metric in LOSS_METRICS else value >= tau


@dataclass
class ProbeResult:
    """One model's probe: its curve, the threshold, the delay (None when censored) and the AUC."""

    metric: str
    unit: str
    curve: list[float]
    tau: float

    @property
    def cap(self) -> int:
        return len(self.curve) - 1

    @property
    def measurable(self) -> bool:
        """False when the metric is undefined from the start (NaN: e.g. a normalised metric whose
        original and reference do not differ, so there is nothing to relearn)."""
        return not math.isnan(self.curve[0])

    @property
    def delay(self) -> int | None:
        return next((i for i, v in enumerate(self.curve) if reaches(self.metric, v, self.tau)), None)

    @property
    def censored(self) -> bool:
        return self.measurable and self.delay is None

    @property
    def delay_text(self) -> str:
        if not self.measurable:
            return "n/a"
        return f"> {self.cap}" if self.censored else str(self.delay)

    @property
    def auc(self) -> float:
        """Mean of the metric over probe steps 1..cap (area under the curve normalised by the cap)."""
        return float(sum(self.curve[1:]) / self.cap)


def delay_ratio(model: ProbeResult, retrain: ProbeResult) -> tuple[float | None, str]:
    """delay(model) / delay(retrain) as (value, text); a bound ("≥ x", "≤ x") when one side is censored."""
    if not (model.measurable and retrain.measurable):
        return None, "n/a (not measurable)"
    if model.censored and retrain.censored:
        return None, "n/a (both censored)"
    if model.censored:
        if retrain.delay == 0:
            return None, "n/a (retrain delay 0)"
        return None, f">= {(model.cap + 1) / retrain.delay:.2f}"
    if retrain.censored:
        return None, f"<= {model.delay / (retrain.cap + 1):.2f}"
    if retrain.delay == 0:
        return None, "n/a (retrain delay 0)"
    value = model.delay / retrain.delay
    return value, f"{value:.2f}"
