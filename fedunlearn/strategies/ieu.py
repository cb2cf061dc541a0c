"""IEU on the server: weight decay and RMS-scaled noise after an unlearning step (after Tran & Woo).

Per parameter tensor W (ALGORITHMS.md section 3, the project's own definition):

    W ← (1 − λ) · W + σ · rms(W) · ε,   ε ~ N(0, I)

λ = ``ieu_decay``, σ = ``ieu_noise``; rms(W) is taken before the decay, so one σ fits every layer.
The noise generator is seeded by (seed, round). :class:`IEUServerSide` wraps any Flower strategy
the way Flower's ``DifferentialPrivacyServerSideFixedClipping`` does, perturbing its aggregate;
:func:`with_ieu` wraps an unlearner: its step is perturbed, and so are the first
``ieu_rounds − 1`` recovery rounds.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedunlearn.strategies.base import Unlearner, UnlearningContext
from fedunlearn.strategies.fedavg import RecordingFedAvg, Weights


def ieu_perturb(weights: Weights, decay: float, noise: float, rng: np.random.Generator) -> Weights:
    """(1 − decay)·W + noise·rms(W)·ε for every tensor W, ε standard normal from ``rng``."""
    out = []
    for w in weights:
        rms = float(np.sqrt(np.mean(np.square(w, dtype=np.float64)))) if w.size else 0.0
        eps = rng.standard_normal(w.shape).astype(np.float32)
        out.append(((1.0 - decay) * w + noise * rms * eps).astype(np.float32))
    return out


def ieu_rng(seed: int, server_round: int) -> np.random.Generator:
    return np.random.default_rng([seed, server_round, 0x1E0])


class IEUServerSide(Strategy):
    """Wraps a strategy and applies :func:`ieu_perturb` to every aggregate it produces."""

    def __init__(self, inner: RecordingFedAvg, decay: float, noise: float, seed: int) -> None:
        self.inner, self.decay, self.noise, self.seed = inner, decay, noise, seed

    @property
    def report(self):
        return self.inner.report

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = self.inner.aggregate_train(server_round, replies)
        if arrays is None:
            return arrays, metrics
        perturbed = ieu_perturb(arrays.to_numpy_ndarrays(), self.decay, self.noise, ieu_rng(self.seed, server_round))
        return ArrayRecord(perturbed), metrics

    def configure_evaluate(self, server_round, arrays, config, grid):
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round, replies):
        return self.inner.aggregate_evaluate(server_round, replies)


def with_ieu(inner: type[Unlearner]) -> type[Unlearner]:
    """An unlearner running ``inner``'s step followed by IEU's decay and noise."""

    class WithIEU(inner):
        name = f"{inner.name}-ieu"

        def step_size(self) -> str:
            return f"{super().step_size()}, forgetting.ieu_decay = {self.cfg.ieu_decay}, " \
                   f"forgetting.ieu_noise = {self.cfg.ieu_noise}"

        def unlearn(self, ctx: UnlearningContext) -> Weights:
            weights = super().unlearn(ctx)
            ctx.notes["ieu"] = f"decay {self.cfg.ieu_decay}, noise {self.cfg.ieu_noise}, rounds {self.cfg.ieu_rounds}"
            return ieu_perturb(weights, self.cfg.ieu_decay, self.cfg.ieu_noise, ieu_rng(ctx.cfg.seed, ctx.clock))

        def recovery_strategy(self, ctx: UnlearningContext, recovery_round: int):
            strategy = super().recovery_strategy(ctx, recovery_round)
            if recovery_round < self.cfg.ieu_rounds:
                return IEUServerSide(strategy, self.cfg.ieu_decay, self.cfg.ieu_noise, ctx.cfg.seed)
            return strategy

    WithIEU.__name__ = WithIEU.__qualname__ = f"{inner.__name__}WithIEU"
    return WithIEU
