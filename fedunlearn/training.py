"""Local SGD and evaluation on in-memory tensors: shared by clients, the probe and the metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedunlearn.arrays import Weights
from fedunlearn.dilution import held

Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
"""A task's training loss of one batch: (model, inputs, labels) -> a scalar to minimise."""


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The classification task's objective: mean cross-entropy of the model's logits."""
    return nn.functional.cross_entropy(model(x), y)


def get_weights(model: nn.Module) -> Weights:
    """The model's state dict as a list of float32 numpy arrays (state-dict order)."""
    return [t.detach().cpu().numpy().copy() for t in model.state_dict().values()]


def set_weights(model: nn.Module, weights: Weights) -> None:
    """Load a list of arrays (state-dict order) into ``model`` in place."""
    with torch.no_grad():
        for t, w in zip(model.state_dict().values(), weights, strict=True):
            t.copy_(torch.from_numpy(np.asarray(w, dtype=np.float32)))


def model_device(model: nn.Module) -> torch.device:
    """Where ``model``'s parameters live (a client actor given a GPU trains there)."""
    return next(model.parameters()).device


@dataclass
class LocalTrainResult:
    """What a local training run did: mean loss over its steps and how many SGD steps it took."""

    loss: float
    steps: int


def train_local(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float = 0.0,
    seed: int = 0,
    ascent: bool = False,
    clip_norm: float | None = None,
    after_step: Callable[[nn.Module], bool] | None = None,
    max_steps: int | None = None,
    loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    weight_decay: float = 0.0,
    objective: Objective = cross_entropy,
) -> LocalTrainResult:
    """Mini-batch SGD on (x, y) in place, batches shuffled by a generator seeded with ``seed``.

    ``ascent`` maximises the loss instead (gradient ascent). ``after_step`` runs after every
    optimiser step and stops training when it returns True (used by PGA's projection).
    ``objective`` is the task's batch loss (cross-entropy; the generative task's contrastive
    divergence); ``loss_of(logits, batch_indices)`` replaces it by a loss of the logits (TRW's
    per-sample targets).
    ``augment`` maps each input batch before the forward pass (augmentation during unlearning);
    ``weight_decay`` λ makes each step w ← w − η(∇ℓ + λw) (client-side IEU). The data goes to the
    model's device; batches are drawn on the CPU, so the order is the same on any device. A
    dilution mask attached to ``model`` (:func:`fedunlearn.dilution.attach`) is held after every step.
    """
    after_step = held(model, after_step)
    device = model_device(model)
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    model.train()
    total, steps = 0.0, 0
    for _ in range(epochs):
        for batch in torch.randperm(len(yt), generator=gen).split(batch_size):
            batch = batch.to(device)
            opt.zero_grad(set_to_none=True)
            inputs = xt[batch] if augment is None else augment(xt[batch])
            loss = objective(model, inputs, yt[batch]) if loss_of is None else loss_of(model(inputs), batch)
            (-loss if ascent else loss).backward()
            if clip_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
            opt.step()
            total += float(loss.detach())
            steps += 1
            if (after_step is not None and after_step(model)) or steps == max_steps:
                return LocalTrainResult(total / steps, steps)
    return LocalTrainResult(total / max(steps, 1), steps)


@torch.no_grad()
def predict_logits(model: nn.Module, x: np.ndarray, batch_size: int = 2048) -> torch.Tensor:
    """Logits for every row of ``x`` (eval mode, no gradients), on the CPU whatever the model's device."""
    model.eval()
    device = model_device(model)
    xt = torch.from_numpy(x)
    if len(xt) == 0:  # no rows: the right number of columns all the same
        return model(torch.zeros((1, *xt.shape[1:]), dtype=xt.dtype, device=device))[:0].cpu()
    return torch.cat([model(xt[i:i + batch_size].to(device)).cpu() for i in range(0, len(xt), batch_size)])



def batch_gradient_stats(model: nn.Module, x: np.ndarray, y: np.ndarray, *, batch_size: int,
                         seed: int) -> tuple[Weights, Weights, int]:
    """Per coordinate, the mean and standard deviation (ddof 1) over B mini-batches of the loss gradient.

    The gradients are taken at the model's current weights (no step is made), on mini-batches of
    a permutation seeded by ``seed``; B = ⌈n / batch_size⌉, or 2 when that is 1. Returned in
    state-dict order, zeros for buffers (they are not trained). Feasible-update masking reads them
    (docs/methods.md, "Feasible-update masking").
    """
    n = len(y)
    if n < 2:
        raise ValueError(f"gradient statistics need at least 2 samples, this client has {n}")
    size = batch_size if n > batch_size else -(-n // 2)
    device = model_device(model)
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    params = dict(model.named_parameters())
    names = list(model.state_dict().keys())
    total = {k: torch.zeros_like(p, dtype=torch.float64) for k, p in params.items()}
    squares = {k: torch.zeros_like(p, dtype=torch.float64) for k, p in params.items()}
    model.train()
    batches = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).split(size)
    for batch in batches:
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(xt[batch.to(device)]), yt[batch.to(device)]).backward()
        for k, p in params.items():
            g = p.grad.detach().double()
            total[k] += g
            squares[k] += g * g
    model.zero_grad(set_to_none=True)
    b = len(batches)
    mean = {k: total[k] / b for k in params}
    std = {k: ((squares[k] - b * mean[k] ** 2).clamp_min(0) / (b - 1)).sqrt() for k in params}
    state = model.state_dict()
    means = [mean[k].float().cpu().numpy() if k in params else np.zeros(state[k].shape, np.float32) for k in names]
    stds = [std[k].float().cpu().numpy() if k in params else np.zeros(state[k].shape, np.float32) for k in names]
    return means, stds, b
