"""The default behaviour: local SGD on the client's train split (FedAvg's client update)."""

from __future__ import annotations

from torch import nn

from fedunlearn.clients.request import ClientRequest, LocalRun
from fedunlearn.data import ClientData
from fedunlearn.training import train_local


def train_behaviour(model: nn.Module, data: ClientData, request: ClientRequest) -> LocalRun:
    """``local-epochs`` epochs of mini-batch SGD (``lr``, ``momentum``, ``batch-size``)."""
    c = request.config
    epochs = int(c["local-epochs"])
    res = train_local(model, data.x_train, data.y_train, epochs=epochs, batch_size=int(c["batch-size"]),
                      lr=float(c["lr"]), momentum=float(c["momentum"]), seed=request.seed)
    return LocalRun(res.loss, epochs)
