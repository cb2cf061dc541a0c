"""FedRecovery: one-shot removal of the forgotten clients' share of the history (after Zhang et al.;
docs/methods.md, "Forgetting", the project's reading).

From the final model w_T and the stored pseudo-gradients, for every stored round t with
participants P_t (the clients with a stored Δ in round t) and U the forgotten clients:

    g_t      = η_s Σ_{k∈P_t} (n_k/N_t) Δ_k^t,              N_t = Σ_{k∈P_t} n_k       (the aggregate)
    g_t^{−u} = η_s Σ_{k∈P_t∖U} (n_k/N_t^{−u}) Δ_k^t,       N_t^{−u} = Σ_{k∈P_t∖U} n_k (0 if P_t ⊆ U)
    δ_t      = g_t − g_t^{−u}                                                          (the residual)
    p_t      = ‖g_t‖² / Σ_s ‖g_s‖²
    w'       = w_T − c · Σ_t p_t · δ_t + N(0, σ² I)

η_s is ``train.server_lr`` (training aggregated the same way), c = ``scale`` (1), σ = ``noise``
(0: off), the noise drawn from a generator seeded by (seed, round of the request). One shot: no
Flower round, and no recovery unless ``recovery = true``. Client requests only (the history holds
whole clients' updates). Settings ``[forgetting.fedrecovery]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedunlearn.arrays import Weights
from fedunlearn.settings import require
from fedunlearn.store import PseudoGradient
from fedunlearn.strategies.base import Unlearner, UnlearningContext, UnlearningError


@dataclass
class FedRecoverySettings:
    """``[forgetting.fedrecovery]``: the step scale c, the noise σ, and whether recovery rounds follow."""

    scale: float = 1.0
    noise: float = 0.0
    recovery: bool = False

    def validate(self) -> None:
        require(math.isfinite(self.scale) and self.scale >= 0, "scale",
                f"must be a finite number >= 0 (got {self.scale}); 1 removes the residuals as they are")
        require(math.isfinite(self.noise) and self.noise >= 0, "noise",
                f"must be a finite number >= 0 (got {self.noise}); 0 adds no noise")


def aggregate(updates: list[PseudoGradient], server_lr: float) -> list[np.ndarray] | None:
    """η_s Σ_k (n_k/N) Δ_k in float64, summed in client order; None for no update (or no sample)."""
    total = float(sum(pg.num_examples for pg in updates))
    if not updates or total <= 0:
        return None
    out = [np.zeros(d.shape, dtype=np.float64) for d in updates[0].delta]
    for pg in sorted(updates, key=lambda pg: pg.partition_id):
        factor = server_lr * pg.num_examples / total
        for o, d in zip(out, pg.delta, strict=True):
            o += factor * d.astype(np.float64)
    return out


def residual(updates: list[PseudoGradient], forgotten: set[int], server_lr: float
             ) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
    """(g_t, δ_t = g_t − g_t^{−u}) of one round's stored updates; None when the round has none."""
    g = aggregate(updates, server_lr)
    if g is None:
        return None
    rest = aggregate([pg for pg in updates if pg.partition_id not in forgotten], server_lr)
    delta = [a.copy() for a in g] if rest is None else [a - b for a, b in zip(g, rest, strict=True)]
    return g, delta


def fedrecovery_step(rounds: list[list[PseudoGradient]], forgotten: set[int], server_lr: float
                     ) -> tuple[list[np.ndarray] | None, list[float]]:
    """Σ_t p_t · δ_t over ``rounds`` (each round's stored updates) and the weights p_t, in float64.

    One pass: Σ_t ‖g_t‖² δ_t and Σ_t ‖g_t‖² are accumulated, then divided (p_t = ‖g_t‖² / Σ_s ‖g_s‖²).
    The step is None when no round has an update; every p_t is 0 when every aggregate is zero.
    """
    weighted: list[np.ndarray] | None = None
    norms: list[float] = []
    for updates in rounds:
        pair = residual(updates, forgotten, server_lr)
        if pair is None:
            norms.append(0.0)
            continue
        g, delta = pair
        norm = float(sum(np.sum(a * a) for a in g))
        norms.append(norm)
        if weighted is None:
            weighted = [np.zeros_like(d) for d in delta]
        for acc, d in zip(weighted, delta, strict=True):
            acc += norm * d
    total = sum(norms)
    p = [n / total if total > 0 else 0.0 for n in norms]
    if weighted is None:
        return None, p
    return [acc / total if total > 0 else np.zeros_like(acc) for acc in weighted], p


def fedrecovery_rng(seed: int, server_round: int) -> np.random.Generator:
    """The noise generator of a request served at ``server_round``."""
    return np.random.default_rng([seed, server_round, 0xFEDEC])


class FedRecovery(Unlearner):
    """w_T − c · Σ_t p_t δ_t (+ seeded Gaussian noise) from the stored history; no Flower round.

    Parameters
    ----------
    settings
        :class:`FedRecoverySettings` (defaults when None); ``recovery = true`` makes the forget
        phase run recovery rounds after the step, as for the other methods.
    """

    Settings = FedRecoverySettings
    needs_history = True
    recovers = False
    step_settings = ("scale",)
    kinds = ("client",)  # the history holds whole clients' updates: no residual of some samples

    def __init__(self, settings: FedRecoverySettings | None = None) -> None:
        super().__init__(settings if settings is not None else FedRecoverySettings())
        self.recovers = bool(self.settings.recovery)

    def unlearn(self, ctx: UnlearningContext) -> Weights:
        f = self.settings
        clients = sorted(set(range(ctx.cfg.data.num_clients)) | set(ctx.node_of) | set(ctx.forgotten)
                         | set(ctx.remaining))
        by_client = {p: ctx.history_rounds(p) for p in clients}
        rounds = sorted({r for rs in by_client.values() for r in rs})
        if not rounds:
            raise UnlearningError("fedrecovery: no stored history; set store.history = true and train again")
        history = [[ctx.history_get(p, r) for p in clients if r in by_client[p]] for r in rounds]
        step, p = fedrecovery_step(history, set(ctx.forgotten), ctx.cfg.train.server_lr)
        out = [w.astype(np.float64) for w in ctx.weights]
        if step is not None:
            out[:len(step)] = [w - f.scale * s for w, s in zip(out, step, strict=False)]
        if f.noise > 0:
            rng = fedrecovery_rng(ctx.cfg.seed, ctx.clock)
            n = len(ctx.init_weights)  # the network's tensors (not an output filter's matrix)
            out = [w + f.noise * rng.standard_normal(w.shape) if i < n else w for i, w in enumerate(out)]
        size = math.sqrt(sum(float(np.sum(s * s)) for s in step)) if step is not None else 0.0
        top = max(range(len(rounds)), key=lambda i: p[i])
        ctx.notes["fedrecovery"] = (f"{len(rounds)} rounds (rounds {rounds[0]}-{rounds[-1]}), largest p_t "
                                    f"{p[top]:.3f} (round {rounds[top]}), |step| {f.scale * size:.4g}, "
                                    f"noise {f.noise:g}")
        return [w.astype(np.float32) for w in out]
