"""PGA's client side (Halimi et al. 2022): projected gradient ascent on the client's own data.

The client starts from the reference model w_ref it is sent, maximises its loss with SGD
(``pga-lr``, ``pga-momentum``, gradients clipped to norm ``pga-clip``) for at most ``pga-epochs``
epochs, projects the weights back into the L2 ball of radius ``pga-radius`` around w_ref after
every step, and stops early once ‖w − w_u‖² exceeds ``pga-distance-threshold`` (w_u: the client's
own model from the last training round, sent as the extra array record ``target-model``).
"""

from __future__ import annotations

import torch
from torch import nn

from fedunlearn.clients.request import ClientRequest, LocalRun
from fedunlearn.clients.train import batch_augmenter
from fedunlearn.data import ClientData
from fedunlearn.training import train_local


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


@torch.no_grad()
def project_to_ball(model: nn.Module, center: torch.Tensor, radius: float) -> None:
    """Move ``model``'s parameters (flattened) into the L2 ball of ``radius`` around ``center``."""
    params = list(model.parameters())
    diff = flat(params) - center
    norm = float(diff.norm())
    if norm <= radius:
        return
    projected = center + diff * (radius / norm)
    offset = 0
    for p in params:
        p.copy_(projected[offset:offset + p.numel()].view_as(p))
        offset += p.numel()


def ascent_behaviour(model: nn.Module, data: ClientData, request: ClientRequest) -> LocalRun:
    """Projected gradient ascent from the received w_ref (see the module docstring)."""
    c = request.config
    with torch.no_grad():
        center = flat(model.parameters()).clone()
        target = torch.cat([torch.from_numpy(a).reshape(-1) for a in request.extra["target-model"]]).to(center.device)
    radius, threshold = float(c["pga-radius"]), float(c["pga-distance-threshold"])

    def after_step(m: nn.Module) -> bool:
        project_to_ball(m, center, radius)
        with torch.no_grad():
            return float(((flat(m.parameters()) - target) ** 2).sum()) > threshold

    res = train_local(model, data.x_train, data.y_train, epochs=int(c["pga-epochs"]), batch_size=int(c["batch-size"]),
                      lr=float(c["pga-lr"]), momentum=float(c["pga-momentum"]), seed=request.seed, ascent=True,
                      clip_norm=float(c["pga-clip"]), after_step=after_step,
                      augment=batch_augmenter(c, request.seed), objective=request.objective)
    steps_per_epoch = -(-data.num_examples // int(c["batch-size"]))
    return LocalRun(res.loss, res.steps / steps_per_epoch)
