"""Dilution: a fixed binary mask on the model's weight matrices (after Díaz-Faloh & Mulet).

The project's definitions (docs/methods.md, "Dilution"), s = ``model.dilution.sparsity``:

* **Which tensors.** Every tensor of the state dict with two or more dimensions (weight matrices,
  conv kernels) is diluted; biases and other vectors never are (:func:`diluted`).
* **Early** (``mode = "early"``, the lottery-ticket setting): per diluted tensor of n entries,
  exactly round(s·n) coordinates drawn uniformly without replacement from a generator seeded by
  (experiment seed, tensor index), before training: :func:`early_mask`. The model is built with
  them at 0 (:func:`dilute_early`, called by :func:`fedunlearn.models.build_model`).
* **Late** (``mode = "late"``): after round train.rounds − ``finetune_rounds`` the round(s·n)
  entries of smallest magnitude of each diluted tensor are pruned (ties: the lower flat index
  first), and the remaining rounds fine-tune with the mask held: :func:`late_mask`.

A mask is a list of boolean arrays in state-dict order, True where a weight is kept (all True for
a tensor that is not diluted). It holds after every local optimiser step (the client side:
:func:`attach`, :func:`hold`, :func:`held`) and after every aggregation and server-side step
(:class:`Schedule`, and :class:`fedunlearn.strategies.dilution.Diluted` around every round).
This module needs numpy and torch only: the ClientApp imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedunlearn.arrays import Weights
from fedunlearn.config import DilutionConfig, ExperimentConfig
from fedunlearn.io import atomic_savez
from fedunlearn.settings import ConfigError

Mask = list[np.ndarray]
"""One boolean array per state-dict tensor, True where the weight is kept."""

MASK_RECORD = "dilution-mask"  # the train message's ArrayRecord holding the mask (fedunlearn/flower/client_app.py)
MASK_FILE = Path("checkpoint") / "dilution_mask.npz"  # beside a run folder's checkpoint
EARLY_STREAM = 0xD1  # the early mask's random stream, apart from every other use of the seed
_ATTACHED = "_fedunlearn_dilution"  # the attribute of a client's model holding its pruned coordinates


def diluted(weights: Sequence[np.ndarray]) -> list[bool]:
    """Per tensor, whether it is diluted: two or more dimensions (weight matrices, conv kernels), never a bias.

    Parameters
    ----------
    weights
        The model's tensors in state-dict order (anything with ``ndim``).

    Returns
    -------
    list of bool
        One entry per tensor.
    """
    return [np.ndim(w) >= 2 for w in weights]


def pruned_count(size: int, sparsity: float) -> int:
    """How many of ``size`` coordinates a diluted tensor holds at 0: round(s·n) (Python's rounding)."""
    return int(round(sparsity * size))


def early_mask(weights: Sequence[np.ndarray], sparsity: float, seed: int) -> Mask:
    """The random mask chosen before training.

    Parameters
    ----------
    weights
        The model's tensors in state-dict order; only their shapes are read.
    sparsity
        s in [0, 1): each diluted tensor of n entries gets exactly round(s·n) pruned coordinates.
    seed
        The experiment seed; tensor i's coordinates come from ``default_rng([seed, EARLY_STREAM, i])``,
        a uniform choice without replacement, so a tensor's mask does not depend on the others.

    Returns
    -------
    Mask
        Boolean arrays shaped like ``weights``, True where kept.
    """
    out = []
    for i, (w, dilute) in enumerate(zip(weights, diluted(weights), strict=True)):
        shape = tuple(np.shape(w))
        keep = np.ones(int(np.prod(shape)), dtype=bool)
        if dilute:
            rng = np.random.default_rng([seed, EARLY_STREAM, i])
            keep[rng.choice(keep.size, size=pruned_count(keep.size, sparsity), replace=False)] = False
        out.append(keep.reshape(shape))
    return out


def late_mask(weights: Sequence[np.ndarray], sparsity: float) -> Mask:
    """The magnitude-pruning mask of trained weights.

    Parameters
    ----------
    weights
        The trained model's tensors in state-dict order.
    sparsity
        s in [0, 1): the round(s·n) entries of smallest |w| of each diluted tensor are pruned.

    Returns
    -------
    Mask
        Boolean arrays shaped like ``weights``, True where kept. Ties in |w| are broken by the
        flat (row-major) index, the lower index pruned first (a stable sort), so the mask is a
        function of the weights alone.
    """
    out = []
    for w, dilute in zip(weights, diluted(weights), strict=True):
        w = np.asarray(w)
        keep = np.ones(w.size, dtype=bool)
        if dilute:
            order = np.argsort(np.abs(w).reshape(-1), kind="stable")
            keep[order[:pruned_count(w.size, sparsity)]] = False
        out.append(keep.reshape(w.shape))
    return out


def apply(weights: Sequence[np.ndarray], mask: Mask) -> Weights:
    """``weights`` with every pruned coordinate set to exactly 0 (new arrays, dtypes kept).

    Parameters
    ----------
    weights
        Tensors in state-dict order (the model's weights, or any vector in weight space).
    mask
        One boolean array per tensor, True where kept.

    Returns
    -------
    Weights
        The masked copies; a NaN or Inf on a pruned coordinate becomes 0 too.
    """
    return [np.where(m, w, np.zeros((), dtype=np.asarray(w).dtype))
            for w, m in zip(weights, mask, strict=True)]


def shaped_like(arrays: Sequence[np.ndarray], mask: Mask) -> bool:
    """Whether ``arrays`` (numpy arrays or torch tensors) is a vector in the weight space ``mask`` covers
    (same count and shapes)."""
    return len(arrays) == len(mask) and all(tuple(np.shape(a)) == m.shape for a, m in zip(arrays, mask, strict=True))


def describe(mask: Mask) -> str:
    """``"8,192 of 10,240 weights of 3 weight matrices pruned (80.0%)"``."""
    pruned = sum(int(m.size - m.sum()) for m, d in zip(mask, diluted(mask), strict=True) if d)
    total = sum(int(m.size) for m, d in zip(mask, diluted(mask), strict=True) if d)
    return (f"{pruned:,} of {total:,} weights of {sum(diluted(mask))} weight matrices pruned "
            f"({pruned / max(total, 1):.1%})")


# -- the client side: the mask on a torch model ------------------------------------------------------
@torch.no_grad()
def attach(model: nn.Module, mask: Sequence[np.ndarray] | None) -> None:
    """Hold ``mask`` on ``model`` from now on (None: detach any), and zero its pruned coordinates now.

    The ClientApp attaches the mask each message brings (or none) before the behaviour runs, so a
    model cached across messages never keeps a stale one. :func:`fedunlearn.training.train_local`
    holds an attached mask after every optimiser step (:func:`held`).
    """
    if mask is None:
        model.__dict__.pop(_ATTACHED, None)
        return
    mask = [np.asarray(m, dtype=bool) for m in (mask.to_numpy_ndarrays() if hasattr(mask, "to_numpy_ndarrays")
                                                else mask)]
    tensors = list(model.state_dict().values())
    if not shaped_like(tensors, mask):
        raise ValueError(f"the dilution mask has {len(mask)} arrays, not shaped like the model's {len(tensors)} tensors")
    model.__dict__[_ATTACHED] = [None if m.all() else torch.from_numpy(~m).to(t.device)
                                 for t, m in zip(tensors, mask, strict=True)]
    hold(model)


@torch.no_grad()
def hold(model: nn.Module) -> None:
    """Set the pruned coordinates of ``model``'s attached mask to exactly 0 (nothing when none is attached)."""
    pruned = model.__dict__.get(_ATTACHED)
    if pruned is None:
        return
    for t, p in zip(model.state_dict().values(), pruned, strict=True):
        if p is not None:
            t.masked_fill_(p, 0.0)


def held(model: nn.Module, after_step: Callable[[nn.Module], bool] | None) -> Callable[[nn.Module], bool] | None:
    """``after_step`` with ``model``'s attached mask held before it and after it (as it is, when none is attached).

    Before: the behaviour's own hook (PGA's projection) sees the diluted weights; after: a hook
    that moves every coordinate (IEU's client-side noise) leaves the pruned ones at 0.
    """
    if _ATTACHED not in model.__dict__:
        return after_step

    def step(m: nn.Module) -> bool:
        hold(m)
        stop = after_step is not None and bool(after_step(m))
        if after_step is not None:
            hold(m)
        return stop

    return step


@torch.no_grad()
def dilute_early(model: nn.Module, settings: DilutionConfig, seed: int) -> None:
    """Zero the early mask's pruned coordinates of a freshly built ``model`` (nothing unless early and s > 0)."""
    if not settings.active or settings.mode != "early":
        return
    tensors = list(model.state_dict().values())
    for t, keep in zip(tensors, early_mask(tensors, settings.sparsity, seed), strict=True):
        if not keep.all():
            t.masked_fill_(torch.from_numpy(~keep).to(t.device), 0.0)


# -- the server side: when the mask exists, and where it is kept ----------------------------------------
def mask_file(folder: str | Path) -> Path:
    """Where a run folder (a training run, a strategy's folder) keeps its model's mask."""
    return Path(folder) / MASK_FILE


def save_mask(folder: str | Path, mask: Mask) -> None:
    """Write ``mask`` to ``folder`` (:func:`mask_file`), atomically."""
    atomic_savez(mask_file(folder), **{f"m{i}": m for i, m in enumerate(mask)})


def load_mask(folder: str | Path) -> Mask | None:
    """The mask a run folder keeps, or None when it keeps none (a dense model)."""
    path = mask_file(folder)
    if not path.exists():
        return None
    with np.load(path) as f:
        return [f[f"m{i}"].astype(bool) for i in range(len(f.files))]


def prune_round(cfg: ExperimentConfig) -> int:
    """The round after which the late mask is made (train.rounds − finetune_rounds); 0 for early."""
    d = cfg.model.dilution
    return cfg.train.rounds - d.finetune_rounds if d.mode == "late" else 0


def run_mask(cfg: ExperimentConfig, folder: str | Path) -> Mask | None:
    """The mask of a training run a timeline starts from (None: dense); ConfigError when a diluted run lacks it."""
    if not cfg.model.dilution.active:
        return None
    mask = load_mask(folder)
    if mask is None:
        raise ConfigError(f"model.dilution: {mask_file(folder)} is missing, so the diluted run in {folder} has no "
                          f"mask (a late mask is made after round {prune_round(cfg)}); train it to train.rounds again")
    return mask


def check_requests(cfg: ExperimentConfig) -> None:
    """Refuse a forget request before the late pruning round: its timeline would start from a dense model."""
    d = cfg.model.dilution
    if not d.active or d.mode != "late":
        return
    first = prune_round(cfg)
    for i, r in enumerate(cfg.forget):
        if (r.round or cfg.train.rounds) < first:
            raise ConfigError(f"forget[{i}].round: {r.round} comes before round {first}, after which model.dilution.mode = "
                              "'late' prunes the model (train.rounds − finetune_rounds); forget at that round or "
                              "later, or raise model.dilution.finetune_rounds")


class Schedule:
    """One model's mask over its rounds, on the server: when it is made, where it is saved.

    Early, the mask exists from the start (drawn from the initial weights' shapes and the seed);
    late, :meth:`after_round` makes it from the weights after round ``prune_round``. Until then
    :attr:`mask` is None and rounds run dense.

    Parameters
    ----------
    cfg
        The experiment (``model.dilution``, ``seed``, ``train.rounds``).
    initial
        The model's initial weights (early: only their shapes are read).
    mask
        A mask made earlier (a training run's, read back); None: made here when it is due.
    save_to
        A run folder to write the mask to when it is made here (None: not written).
    log
        Where the line saying a late mask was made goes.
    """

    def __init__(self, cfg: ExperimentConfig, initial: Weights, mask: Mask | None = None,
                 save_to: str | Path | None = None, log: Callable[[str], None] = print) -> None:
        self.settings, self.log, self.save_to = cfg.model.dilution, log, save_to
        self.prune_round = prune_round(cfg)
        self.mask = mask if self.settings.active else None
        if self.settings.active and self.settings.mode == "early" and self.mask is None:
            self.mask = early_mask(initial, self.settings.sparsity, cfg.seed)
            if save_to is not None:
                save_mask(save_to, self.mask)

    @classmethod
    def for_training(cls, cfg: ExperimentConfig, folder: str | Path, initial: Weights, start: int,
                     log: Callable[[str], None] = print) -> Schedule:
        """A training run's schedule, resumed after round ``start``: a late mask already made is read back."""
        saved = None
        if cfg.model.dilution.active and cfg.model.dilution.mode == "late" and start >= prune_round(cfg):
            saved = run_mask(cfg, folder)
        return cls(cfg, initial, saved, folder, log)

    def after_round(self, weights: Weights, server_round: int) -> Weights:
        """The weights after round ``server_round``, masked; late, the mask is made after round ``prune_round``."""
        s = self.settings
        if s.active and s.mode == "late" and self.mask is None and server_round == self.prune_round:
            self.mask = late_mask(weights, s.sparsity)
            if self.save_to is not None:
                save_mask(self.save_to, self.mask)
            self.log(f"  dilution: after round {server_round}, {describe(self.mask)} by magnitude; "
                     f"{s.finetune_rounds} fine-tuning round(s) follow")
        return self.enforce(weights)

    def enforce(self, weights: Weights) -> Weights:
        """``weights`` with the mask applied (as they are while there is none)."""
        return apply(weights, self.mask) if self.mask is not None else list(weights)
