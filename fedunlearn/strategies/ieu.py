"""IEU on the server: weight decay and RMS-scaled noise after an unlearning step (after Tran & Woo).

Per parameter tensor W (docs/methods.md, "Forgetting", the project's own definition):

    W ← (1 − λ) · W + σ · rms(W) · ε,   ε ~ N(0, I)

λ = ``decay``, σ = ``noise`` (``[forgetting.ieu]``); rms(W) is taken before the decay, so one σ
fits every layer. The noise generator is seeded by (seed, round). :class:`IEUServerSide` wraps any
Flower strategy the way Flower's ``DifferentialPrivacyServerSideFixedClipping`` does, perturbing
its aggregate; :class:`IEU` wraps any unlearner (``puf+ieu``, ``pga+ieu``): its step is perturbed,
and so are the first ``rounds − 1`` recovery rounds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedunlearn.arrays import Weights, record_like
from fedunlearn.class_unlearning import split_filter, with_filter
from fedunlearn.settings import require
from fedunlearn.strategies.base import UnlearnerWrapper, UnlearningContext
from fedunlearn.strategies.fedavg import RecordingFedAvg


@dataclass
class IEUSettings:
    """λ (``decay``), σ (``noise``) and how many rounds (the step and ``rounds − 1`` recovery rounds) get it."""

    decay: float = 0.1
    noise: float = 0.1
    rounds: int = 1

    def validate(self) -> None:
        require(0 <= self.decay < 1, "decay", f"must be in [0, 1) (got {self.decay})")
        require(self.noise >= 0, "noise", f"must be >= 0 (got {self.noise})")
        require(self.rounds >= 1, "rounds", f"must be >= 1 (got {self.rounds})")


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
    """Wraps a strategy and applies :func:`ieu_perturb` to every aggregate it produces.

    In anyone's ServerApp: ``IEUServerSide(PUFRound(...), decay=0.1, noise=0.1, seed=0).start(grid,
    arrays, num_rounds=1)`` is PUF's step followed by IEU's. The noise is seeded by (seed, round on
    the inner strategy's clock).
    """

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
        rng = ieu_rng(self.seed, self.inner.clock(server_round))
        perturbed = ieu_perturb(arrays.to_numpy_ndarrays(), self.decay, self.noise, rng)
        return record_like(arrays, perturbed), metrics

    def configure_evaluate(self, server_round, arrays, config, grid):
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round, replies):
        return self.inner.aggregate_evaluate(server_round, replies)


class IEU(UnlearnerWrapper):
    """Any unlearner's step followed by IEU's decay and noise (and its first recovery rounds)."""

    Settings = IEUSettings
    step_settings = ("decay", "noise")

    def unlearn(self, ctx: UnlearningContext) -> Weights:
        f = self.settings
        network, output_filter = split_filter(self.inner.unlearn(ctx), len(ctx.init_weights))
        ctx.notes["ieu"] = f"decay {f.decay}, noise {f.noise}, rounds {f.rounds}"
        return with_filter(ieu_perturb(network, f.decay, f.noise, ieu_rng(ctx.cfg.seed, ctx.clock)), output_filter)

    def recovery_strategy(self, ctx: UnlearningContext, recovery_round: int):
        strategy = self.inner.recovery_strategy(ctx, recovery_round)
        if recovery_round < self.settings.rounds:
            return IEUServerSide(strategy, self.settings.decay, self.settings.noise, ctx.cfg.seed)
        return strategy
