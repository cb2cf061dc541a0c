"""TRW's client side: fine-tuning toward the tilted reweighting target on forget-class inputs.

On inputs of the forget classes (``trw-classes``) the loss is KL(q ‖ model), q computed once from
the model at the request (the extra array record ``original-model``) and the class similarity
(``similarity``) by :func:`fedunlearn.class_unlearning.trw_target`; on the client's other samples
it is cross-entropy weighted by ``trw-gamma``. The local recipe (epochs, batch, lr, momentum) is
the training run's.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from torch import nn

from fedunlearn.class_unlearning import trw_target
from fedunlearn.clients.request import ClientRequest, LocalRun
from fedunlearn.clients.train import batch_augmenter
from fedunlearn.data import ClientData
from fedunlearn.training import get_weights, model_device, predict_logits, set_weights, train_local


def trw_behaviour(model: nn.Module, data: ClientData, request: ClientRequest) -> LocalRun:
    """``local-epochs`` epochs of SGD on the TRW loss (see the module docstring)."""
    c = request.config
    classes = json.loads(str(c["trw-classes"]))
    current = get_weights(model)
    set_weights(model, request.extra["original-model"])
    probs = torch.softmax(predict_logits(model, data.x_train).double(), 1).numpy()
    set_weights(model, current)
    forget = np.isin(data.y_train, classes)
    target = np.zeros_like(probs)
    target[forget] = trw_target(probs[forget], data.y_train[forget], classes, request.extra["similarity"][0],
                                float(c["trw-temperature"]), float(c["trw-beta"]))
    device = model_device(model)
    q, is_forget = torch.from_numpy(target).float().to(device), torch.from_numpy(forget).to(device)
    labels, gamma = torch.from_numpy(data.y_train).to(device), float(c["trw-gamma"])

    def loss_of(logits: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        log_p = torch.log_softmax(logits, 1)
        q_b = q[batch]
        kl = (q_b * (torch.log(q_b.clamp_min(1e-12)) - log_p)).sum(1)  # 0 · log 0 = 0
        ce = nn.functional.nll_loss(log_p, labels[batch], reduction="none")
        return torch.where(is_forget[batch], kl, gamma * ce).mean()

    epochs = int(c["local-epochs"])
    res = train_local(model, data.x_train, data.y_train, epochs=epochs, batch_size=int(c["batch-size"]),
                      lr=float(c["lr"]), momentum=float(c["momentum"]), seed=request.seed, loss_of=loss_of,
                      augment=batch_augmenter(c, request.seed))
    return LocalRun(res.loss, epochs)
