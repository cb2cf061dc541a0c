"""Poisoning of a client's data: a bright corner patch relabelled to a target class (a backdoor),
or, with ``patch_size = 0``, relabelling alone (mislabelled, contaminated data)."""

from __future__ import annotations

import numpy as np

from fedunlearn.config import BackdoorConfig


def add_trigger(x: np.ndarray, cfg: BackdoorConfig) -> np.ndarray:
    """Return a copy of images (N, C, H, W) with the trigger patch in the bottom-right corner.

    Tabular inputs (N, F) get the trigger on their last ``patch_size`` features.
    """
    out = x.copy()
    p = cfg.patch_size
    if p == 0:
        return out
    if out.ndim == 4:
        out[:, :, -p:, -p:] = cfg.patch_value
    else:
        out[:, -p:] = cfg.patch_value
    return out


def poison(x: np.ndarray, y: np.ndarray, cfg: BackdoorConfig, rng: np.random.Generator
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Poison a ``fraction`` of the samples whose label is not the target.

    Returns the poisoned features and labels (copies) and the indices that were poisoned.
    """
    candidates = np.flatnonzero(y != cfg.target_label)
    n = int(round(cfg.fraction * len(candidates)))
    chosen = np.sort(rng.choice(candidates, size=n, replace=False))
    x_out, y_out = x.copy(), y.copy()
    x_out[chosen] = add_trigger(x[chosen], cfg)
    y_out[chosen] = cfg.target_label
    return x_out, y_out, chosen


def attack_set(x_test: np.ndarray, y_test: np.ndarray, cfg: BackdoorConfig) -> tuple[np.ndarray, np.ndarray]:
    """Triggered test images whose true class is not the target, labelled with the target.

    The backdoor attack success rate is the accuracy on this set.
    """
    keep = y_test != cfg.target_label
    x = add_trigger(x_test[keep], cfg)
    return x, np.full(int(keep.sum()), cfg.target_label, dtype=np.int64)
