"""Model weights as lists of numpy arrays, and the sums every aggregation rule is made of."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from flwr.app import Array, ArrayRecord

Weights = list[np.ndarray]
"""A model's tensors in state-dict order, float32."""


def apply_updates(weights: Weights, terms: Sequence[tuple[float, Weights]]) -> Weights:
    """w + Σ_i c_i · Δ_i, accumulated in the given order, in float32."""
    out = [w.astype(np.float32, copy=True) for w in weights]
    for coef, delta in terms:
        factor = np.float32(coef)
        for o, d in zip(out, delta, strict=True):
            o += factor * d
    return out


def weighted_step(weights: Weights, contributions: Sequence[tuple[float, Weights]], scale: float) -> Weights:
    """w + scale · Σ_i (n_i / Σ_j n_j) · Δ_i, accumulated in the given order, in float32."""
    total = float(sum(n for n, _ in contributions))
    return apply_updates(weights, [(scale * n / total, d) for n, d in contributions])


def all_finite(weights: Weights) -> bool:
    """Whether every entry of every tensor is finite (no NaN, no Inf)."""
    return all(np.isfinite(w).all() for w in weights)


def l2_sq(a: Weights, b: Weights) -> float:
    """‖a − b‖² over all tensors, in float64."""
    return float(sum(np.sum((x.astype(np.float64) - y) ** 2) for x, y in zip(a, b, strict=True)))


def record_like(template: ArrayRecord, weights: Weights) -> ArrayRecord:
    """``weights`` as an ArrayRecord with ``template``'s keys (a ClientApp that loads a torch state dict
    from it finds its parameter names), in order."""
    keys = list(template.keys())
    if len(keys) != len(weights):
        raise ValueError(f"{len(weights)} arrays for a record of {len(keys)}")
    return ArrayRecord(dict(zip(keys, (Array(np.asarray(w)) for w in weights), strict=True)))
