"""IEU: weight decay and RMS-scaled noise around an unlearning step (after Tran & Woo), on the
server or on the clients.

The project's own definitions (docs/methods.md, "Forgetting"), λ = ``decay``, σ = ``noise``
(``[forgetting.ieu]``), ε ~ N(0, I):

* ``side = "server"``: per parameter tensor W of the aggregate, after the unlearning step and the
  first ``rounds − 1`` recovery rounds, W ← (1 − λ) · W + σ · rms(W) · ε; rms(W) is taken before
  the decay, so one σ fits every layer; the generator is seeded by (seed, round).
  :class:`IEUServerSide` wraps any Flower strategy the way Flower's
  ``DifferentialPrivacyServerSideFixedClipping`` does, perturbing its aggregate.
* ``side = "client"``: during the first ``rounds`` recovery rounds every retained client's local
  SGD step is w ← w − η(∇ℓ + λw), followed by w ← w + σ · rms(w) · ε per tensor, ε from the
  client's seeded generator (``fedunlearn/clients/train.py`` reads the message config keys
  ``ieu-decay`` and ``ieu-noise``). :class:`IEUClientSide` wraps any Flower strategy and adds
  those keys to every train message it sends. The unlearning round itself is left alone: the
  definition names recovery rounds, and in PUF's round the targets' update on the forget data is
  scaled by η_u (20), which would scale their noise with it. Those ``rounds`` recovery rounds run
  even when accuracy is already back at the target (:attr:`IEU.min_recovery_rounds`): they are
  the method.

:class:`IEU` wraps any unlearner (``puf+ieu``, ``pga+ieu``) with either side.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import Strategy

from fedunlearn.arrays import Weights, record_like
from fedunlearn.class_unlearning import split_filter, with_filter
from fedunlearn.config import ExperimentConfig
from fedunlearn.settings import require
from fedunlearn.strategies.base import UnlearnerWrapper, UnlearningContext
from fedunlearn.strategies.fedavg import RecordingFedAvg
from fedunlearn.strategies.wrapping import StrategyWrapper, WithClientConfig

SIDES = ("server", "client")
DECAY_KEY, NOISE_KEY = "ieu-decay", "ieu-noise"  # the train message config keys of client-side IEU


@dataclass
class IEUSettings:
    """λ (``decay``), σ (``noise``), where IEU acts (``side``) and for how many rounds.

    ``side = "server"``: the step's aggregate and those of the first ``rounds − 1`` recovery rounds
    are perturbed; ``"client"``: the first ``rounds`` recovery rounds' local steps decay and add noise.
    The defaults are the server side's choice of ``experiments/ieu_sweep.toml`` (they were 0.1, 0.1).
    """

    decay: float = 0.5  # λ and σ chosen on a validation split (docs/methods.md, "IEU"; README, "Tuning IEU")
    noise: float = 0.05
    rounds: int = 1
    side: str = "server"

    def validate(self) -> None:
        require(0 <= self.decay < 1, "decay", f"must be in [0, 1) (got {self.decay})")
        require(self.noise >= 0, "noise", f"must be >= 0 (got {self.noise})")
        require(self.rounds >= 1, "rounds", f"must be >= 1 (got {self.rounds})")
        require(self.side in SIDES, "side", f"must be one of {', '.join(SIDES)} (got {self.side!r})")


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


class IEUServerSide(StrategyWrapper):
    """Wraps a strategy and applies :func:`ieu_perturb` to every aggregate it produces.

    In anyone's ServerApp: ``IEUServerSide(PUFRound(...), decay=0.1, noise=0.1, seed=0).start(grid,
    arrays, num_rounds=1)`` is PUF's step followed by IEU's. The noise is seeded by (seed, round on
    the inner strategy's clock).
    """

    def __init__(self, inner: RecordingFedAvg, decay: float, noise: float, seed: int) -> None:
        super().__init__(inner)
        self.decay, self.noise, self.seed = decay, noise, seed

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = self.inner.aggregate_train(server_round, replies)
        if arrays is None:
            return arrays, metrics
        rng = ieu_rng(self.seed, self.inner.clock(server_round))
        perturbed = ieu_perturb(arrays.to_numpy_ndarrays(), self.decay, self.noise, rng)
        return record_like(arrays, perturbed), metrics


class IEUClientSide(WithClientConfig):
    """Wraps a strategy and asks every client it trains for IEU's client-side step.

    Every train message the inner strategy sends gets ``ieu-decay`` (λ) and ``ieu-noise`` (σ) in
    its ConfigRecord; a ClientApp running fedunlearn's default behaviour
    (``fedunlearn/clients/train.py``) then makes each local SGD step w ← w − η(∇ℓ + λw) and adds
    σ·rms(w)·ε per tensor. Aggregation is the inner strategy's. In anyone's ServerApp:
    ``IEUClientSide(RecordingFedAvg(...), decay=0.05, noise=0.01).start(grid, arrays, num_rounds=1)``
    is one recovery round with client-side IEU.
    """

    def __init__(self, inner: Strategy, decay: float, noise: float) -> None:
        super().__init__(inner, {DECAY_KEY: float(decay), NOISE_KEY: float(noise)})


class IEU(UnlearnerWrapper):
    """Any unlearner's step with IEU's decay and noise, on the server (after the step and the first
    ``rounds − 1`` recovery rounds) or on the clients (during the first ``rounds`` recovery rounds)."""

    Settings = IEUSettings
    step_settings = ("decay", "noise")

    @property
    def client_side(self) -> bool:
        return self.settings.side == "client"

    def refuses(self, cfg: ExperimentConfig) -> str:
        f = self.settings
        if self.client_side and not self.inner.recovers:
            return "with side = \"client\" acts in recovery rounds, and the method it wraps runs none"
        if self.client_side and cfg.forgetting.recovery_rounds < f.rounds:
            return (f"with side = \"client\" needs {f.rounds} recovery round(s), and forgetting.recovery_rounds is "
                    f"{cfg.forgetting.recovery_rounds}")
        return super().refuses(cfg)

    @property
    def min_recovery_rounds(self) -> int:
        """Recovery rounds that run whatever the accuracy: client-side IEU's ``rounds`` (and the inner's)."""
        return max(self.inner.min_recovery_rounds, self.settings.rounds if self.client_side else 0)

    def unlearn(self, ctx: UnlearningContext) -> Weights:
        f = self.settings
        weights = self.inner.unlearn(ctx)
        ctx.notes["ieu"] = ("client side, " if self.client_side else "") + f"decay {f.decay}, noise {f.noise}, rounds {f.rounds}"
        if self.client_side:  # the clients decay and add noise in the recovery rounds
            return weights
        network, output_filter = split_filter(weights, len(ctx.init_weights))
        return with_filter(ieu_perturb(network, f.decay, f.noise, ieu_rng(ctx.cfg.seed, ctx.clock)), output_filter)

    def recovery_strategy(self, ctx: UnlearningContext, recovery_round: int):
        strategy, f = self.inner.recovery_strategy(ctx, recovery_round), self.settings
        if self.client_side:
            return IEUClientSide(strategy, f.decay, f.noise) if recovery_round <= f.rounds else strategy
        if recovery_round < f.rounds:
            return IEUServerSide(strategy, f.decay, f.noise, ctx.cfg.seed)
        return strategy
