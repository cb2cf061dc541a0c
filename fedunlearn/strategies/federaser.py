"""FedEraser: calibrated replay of the stored history (Liu et al. 2021; docs/methods.md, "Forgetting").

Starting from the initial weights, the stored rounds (every ``interval``-th) are replayed
over the remaining clients. The first replayed round is plain aggregation of the stored retained
updates. In each later one, the retained clients calibrate for ⌈r·E⌉ local epochs
(r = ``calibration_ratio``) from the new global model, and per layer the step is

    step_l = ‖U_l‖ · Û_l / ‖Û_l‖,

U the (n_k-weighted) mean of the stored updates of that round, Û the mean of the calibration
updates: the direction comes from the calibration, the size from the history.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from flwr.app import ConfigRecord

from fedunlearn.arrays import Weights, weighted_step
from fedunlearn.settings import require
from fedunlearn.store import PseudoGradient
from fedunlearn.strategies.base import Unlearner, UnlearningContext, UnlearningError
from fedunlearn.strategies.fedavg import ClientUpdate, RecordingFedAvg


@dataclass
class FedEraserSettings:
    """``[forgetting.federaser]``: Δt (replay every ``interval``-th round) and the calibration ratio r."""

    interval: int = 1
    calibration_ratio: float = 0.5

    def validate(self) -> None:
        require(self.interval >= 1, "interval", f"must be >= 1 (got {self.interval})")
        require(0 < self.calibration_ratio <= 1, "calibration_ratio", f"must be in (0, 1] (got {self.calibration_ratio})")


def calibrated_step(old: list[tuple[int, Weights]], new: list[tuple[int, Weights]]) -> Weights:
    """Per layer ‖mean old‖ · (mean new / ‖mean new‖), both means weighted by n_k."""
    def mean(pairs):
        total = float(sum(n for n, _ in pairs))
        return [sum(np.float64(n / total) * d[i] for n, d in pairs) for i in range(len(pairs[0][1]))]

    old_mean, new_mean = mean(old), mean(new)
    step = []
    for o, u in zip(old_mean, new_mean, strict=True):
        norm_new = float(np.linalg.norm(u))
        step.append((np.linalg.norm(o) * u / norm_new if norm_new > 0 else np.zeros_like(u)).astype(np.float32))
    return step


class FedEraserCalibration(RecordingFedAvg):
    """One replayed round: clients with a stored update calibrate; :func:`calibrated_step` applies."""

    def __init__(self, *args, old_updates: dict[int, PseudoGradient], calibration_epochs: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.old_updates, self.calibration_epochs = old_updates, calibration_epochs

    def sample(self, server_round: int) -> list[int]:
        return sorted(self.old_updates)

    def client_config(self, partition_id: int, config: ConfigRecord) -> ConfigRecord:
        config["local-epochs"] = self.calibration_epochs
        return config

    def combine(self, server_round: int, global_weights: Weights, updates: list[ClientUpdate]) -> Weights:
        old = [(self.old_updates[u.client].num_examples,
                [d.astype(np.float32) for d in self.old_updates[u.client].delta]) for u in updates]
        step = calibrated_step(old, [(u.num_examples, u.delta) for u in updates])
        return [w + s for w, s in zip(global_weights, step, strict=True)]


class FedEraser(Unlearner):
    """Calibrated replay of the stored history over the remaining clients."""

    Settings = FedEraserSettings
    needs_history = True
    step_settings = ("calibration_ratio",)
    kinds = ("client",)  # the history holds whole clients' updates: nothing to replay without some samples

    def unlearn(self, ctx: UnlearningContext) -> Weights:
        rounds = sorted({r for p in ctx.remaining for r in ctx.history_rounds(p)})[::self.settings.interval]
        if not rounds:
            raise UnlearningError("federaser: no stored history; set store.history = true and train again")
        epochs = math.ceil(self.settings.calibration_ratio * ctx.cfg.train.local_epochs)

        def stored(r: int) -> dict[int, PseudoGradient]:
            return {p: ctx.history_get(p, r) for p in ctx.remaining if r in ctx.history_rounds(p)}

        first = stored(rounds[0])
        weights = weighted_step(ctx.init_weights, [(pg.num_examples, [d.astype(np.float32) for d in pg.delta])
                                                   for _, pg in sorted(first.items())], ctx.cfg.train.server_lr)
        for r in rounds[1:]:
            strategy = FedEraserCalibration.from_config(ctx.cfg, ctx.store, ctx.node_of, ctx.remaining,
                                                        old_updates=stored(r), calibration_epochs=epochs)
            weights = ctx.next_round(strategy, weights, "unlearn")
        ctx.notes["federaser_rounds"] = str(len(rounds))
        return weights
