"""Feasible-update masking: keep only the reliable, feasible coordinates of a first-order unlearning step.

After Dine et al.; the test is the project's own (docs/methods.md, "Feasible-update masking").
In the unlearning round, each holder k of forget data also returns, per coordinate, the mean m_k
and standard deviation s_k (over its B_k mini-batches) of its loss gradient at the weights it was
sent. With the holders' weights w_k = |F_k| / Σ_j |F_j|, the pooled mean and standard error are

    m = Σ_k w_k m_k,    se = sqrt(Σ_k w_k² s_k² / B_k)

(for one holder, |m| / se is the definition's |m_i| / (s_i / √B)). Coordinate i of the step g is kept when

* reliable: |m_i| ≥ z · se_i and m_i ≠ 0 (z = 2 by default, about 95% one-sided), and
* feasible: sign(g_i) · r_i ≥ 0, r the retained clients' part of the same round's aggregate. A
  round without retained updates (PUF special, PGA) has no r: the check is skipped and the
  results say so.

The step g and r are read off the round's own aggregation rule, whatever it is: r is the
aggregate with the forget updates zeroed minus w_t, g the full aggregate minus that (exact for any
rule linear in the forget updates: PUF regular and special, PGA's average). The masked round ends
at w_t + r + g ⊙ mask. ``puf+mask``, ``pga+mask``: any unlearner with a first-order step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from fedunlearn.arrays import Weights, apply_updates, record_like
from fedunlearn.config import ExperimentConfig
from fedunlearn.settings import require
from fedunlearn.strategies.base import UnlearnerWrapper, UnlearningContext, UnlearningError
from fedunlearn.strategies.fedavg import FORGET, REGULAR, RecordingFedAvg
from fedunlearn.strategies.wrapping import StrategyWrapper, add_config


@dataclass
class MaskSettings:
    """z: how many standard errors the mean gradient of a kept coordinate is away from 0."""

    z: float = 2.0

    def validate(self) -> None:
        require(self.z >= 0, "z", f"must be >= 0 (got {self.z}); 2 keeps coordinates reliable at about 95%")


@dataclass
class HolderStats:
    """One holder's gradient statistics: its forget-set size, per-coordinate mean and std, and B."""

    num_examples: int
    mean: Weights
    std: Weights
    batches: int


def feasible_mask(step: Weights, retained: Weights | None, holders: Sequence[HolderStats], z: float) -> list[np.ndarray]:
    """The boolean mask of the coordinates of ``step`` kept (see the module docstring).

    ``retained`` is r, or None when the round has no retained update (the feasibility check is skipped).
    """
    total = float(sum(h.num_examples for h in holders))
    masks = []
    for i, g in enumerate(step):
        mean = sum((h.num_examples / total) * h.mean[i].astype(np.float64) for h in holders)
        var = sum((h.num_examples / total) ** 2 * h.std[i].astype(np.float64) ** 2 / h.batches for h in holders)
        keep = (np.abs(mean) >= z * np.sqrt(var)) & (mean != 0)
        if retained is not None:
            keep &= np.sign(g) * retained[i] >= 0
        masks.append(keep)
    return masks


def base_strategy(strategy) -> RecordingFedAvg:
    """The :class:`RecordingFedAvg` inside any number of :class:`StrategyWrapper` layers."""
    while isinstance(strategy, StrategyWrapper):
        strategy = strategy.inner
    if not isinstance(strategy, RecordingFedAvg):
        raise TypeError(f"feasible-update masking needs a RecordingFedAvg round, got {type(strategy).__name__}")
    return strategy


class FeasibleUpdateMask(StrategyWrapper):
    """Masks the unlearning step of one round of ``inner`` (a :class:`RecordingFedAvg` with forget tasks).

    The forget-role messages ask for gradient statistics (``grad-stats``); the round's aggregate
    is rebuilt as w_t + r + g ⊙ mask. After the round, :attr:`kept` holds, per tensor name,
    (coordinates kept, coordinates), and :attr:`feasibility_checked` whether there was an r.
    """

    def __init__(self, inner: RecordingFedAvg | StrategyWrapper, z: float = 2.0) -> None:
        super().__init__(inner)
        MaskSettings(z).validate()
        self.z = z
        self.kept: dict[str, tuple[int, int]] = {}
        self.feasibility_checked = False

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))
        forget = {id(m) for m, role in base_strategy(self.inner)._sent if role == FORGET}
        for m in messages:
            if id(m) in forget:
                add_config(m, {"grad-stats": True})
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        base = base_strategy(self.inner)
        updates = base.collect(server_round, replies)
        forget = [u for u in updates if u.role == FORGET]
        asked = sum(role == FORGET for _, role in base._sent)
        if not forget or len(forget) < asked or any("grad-mean" not in u.extra for u in forget):
            raise UnlearningError(f"mask: {len(forget)} of {asked} holders of forget data answered the unlearning "
                                  "round with gradient statistics; every one must (a stored update cannot be masked)")
        w_t = base._global
        full = base.combine(server_round, w_t, updates)
        zeroed = [dataclasses.replace(u, delta=[np.zeros_like(d) for d in u.delta]) if u.role == FORGET else u
                  for u in updates]
        without = base.combine(server_round, w_t, zeroed)
        step = apply_updates(full, [(-1.0, without)])
        retained = apply_updates(without, [(-1.0, w_t)])
        self.feasibility_checked = any(u.role == REGULAR for u in updates)
        holders = [HolderStats(u.num_examples, u.extra["grad-mean"], u.extra["grad-std"],
                               int(u.metrics["grad-batches"])) for u in forget]
        masks = feasible_mask(step, retained if self.feasibility_checked else None, holders, self.z)
        self.kept = {name: (int(m.sum()), int(m.size)) for name, m in zip(base._template.keys(), masks, strict=True)}
        new = apply_updates(without, [(1.0, [g * m for g, m in zip(step, masks, strict=True)])])
        return record_like(base._template, new), base.round_metrics(updates)


def describe_kept(kept: dict[str, tuple[int, int]]) -> str:
    """"kept 41.2% of 1,234 coordinates (fc.weight 40.0%, ...)"."""
    total = sum(t for _, t in kept.values())
    share = sum(k for k, _ in kept.values()) / max(total, 1)
    layers = ", ".join(f"{name} {k / max(t, 1):.1%}" for name, (k, t) in kept.items())
    return f"kept {share:.1%} of {total:,} coordinates ({layers})"


class Mask(UnlearnerWrapper):
    """Any unlearner with a first-order step, its unlearning rounds masked (recovery unchanged)."""

    needs_classifier = True  # gradient statistics of the cross-entropy loss

    Settings = MaskSettings

    def refuses(self, cfg: ExperimentConfig) -> str:
        return super().refuses(cfg) or ("" if self.inner.first_order_step() else
                                        "has no first-order unlearning step to mask (mask wraps puf with fresh "
                                        "updates or pga)")

    def unlearn(self, ctx: UnlearningContext) -> Weights:
        rounds: list[FeasibleUpdateMask] = []

        def masked(strategy) -> FeasibleUpdateMask:
            rounds.append(FeasibleUpdateMask(strategy, self.settings.z))
            return rounds[-1]

        with ctx.rounds_wrapped(masked):
            weights = self.inner.unlearn(ctx)
        kept: dict[str, tuple[int, int]] = {}
        for r in rounds:
            for name, (k, t) in r.kept.items():
                kept[name] = (kept.get(name, (0, 0))[0] + k, kept.get(name, (0, 0))[1] + t)
        checked = all(r.feasibility_checked for r in rounds)
        ctx.notes["mask"] = (f"z {self.settings.z}, {describe_kept(kept)}; feasibility "
                             + ("checked against the retained update" if checked else
                                "skipped (no retained update in the unlearning round)"))
        return weights


