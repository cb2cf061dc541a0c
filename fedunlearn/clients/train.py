"""The default behaviour: local SGD on the client's train split (FedAvg's client update)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from fedunlearn.data import ClientData
from fedunlearn.training import train_local


@dataclass
class LocalRun:
    """What a behaviour reports: mean train loss, local epochs run and SGD steps taken."""

    loss: float
    epochs: float
    steps: int


def train_behaviour(model: nn.Module, data: ClientData, config: dict, seed: int) -> LocalRun:
    """``local-epochs`` epochs of mini-batch SGD (``lr``, ``momentum``, ``batch-size``)."""
    epochs = int(config["local-epochs"])
    res = train_local(model, data.x_train, data.y_train, epochs=epochs, batch_size=int(config["batch-size"]),
                      lr=float(config["lr"]), momentum=float(config["momentum"]), seed=seed)
    return LocalRun(res.loss, epochs, res.steps)
