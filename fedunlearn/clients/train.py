"""The default behaviour: local SGD on the client's train split (FedAvg's client update).

Two settings of the round's config change it after a forget request (docs/methods.md):
``augment`` (a policy of :data:`fedunlearn.augmentation.POLICIES`) augments every batch, and
``ieu-decay`` λ / ``ieu-noise`` σ make it IEU's client-side step: each SGD step is
w ← w − η(∇ℓ + λw) (torch's ``weight_decay``: with momentum, λw enters the momentum buffer),
followed by w ← w + σ·rms(w)·ε per tensor, ε ~ N(0, I) from the client's
seeded generator.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from fedunlearn.augmentation import augmenter
from fedunlearn.clients.request import ClientRequest, LocalRun
from fedunlearn.data import ClientData
from fedunlearn.training import train_local

AUGMENT_STREAM, NOISE_STREAM, OBJECTIVE_STREAM = 1, 2, 3  # a client's random streams besides its batch order


def stream_seed(seed: int, stream: int) -> int:
    """The seed of one random stream of a client's round (its batches use ``seed`` itself)."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])


def batch_augmenter(config: dict, seed: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The augmentation the round's config asks for (None: none), drawn from the round's augmentation stream."""
    policy = str(config.get("augment", ""))
    return augmenter(policy, stream_seed(seed, AUGMENT_STREAM)) if policy else None


def weight_noise(noise: float, seed: int) -> Callable[[nn.Module], bool]:
    """An ``after_step`` hook adding σ·rms(W)·ε to every parameter tensor W (never stops training),
    ε from the round's noise stream."""
    draws = torch.Generator().manual_seed(stream_seed(seed, NOISE_STREAM))

    @torch.no_grad()
    def add_noise(model: nn.Module) -> bool:
        for p in model.parameters():
            rms = p.detach().double().pow(2).mean().sqrt().float()
            p.add_(noise * rms * torch.randn(p.shape, generator=draws).to(p.device))
        return False

    return add_noise


def train_behaviour(model: nn.Module, data: ClientData, request: ClientRequest) -> LocalRun:
    """``local-epochs`` epochs of mini-batch SGD (``lr``, ``momentum``, ``batch-size``)."""
    c = request.config
    epochs = int(c["local-epochs"])
    noise = float(c.get("ieu-noise", 0.0))
    res = train_local(model, data.x_train, data.y_train, epochs=epochs, batch_size=int(c["batch-size"]),
                      lr=float(c["lr"]), momentum=float(c["momentum"]), seed=request.seed,
                      augment=batch_augmenter(c, request.seed), weight_decay=float(c.get("ieu-decay", 0.0)),
                      after_step=weight_noise(noise, request.seed) if noise > 0 else None,
                      objective=request.objective)
    return LocalRun(res.loss, epochs)
