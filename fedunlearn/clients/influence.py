"""The client side of the influence-function strategy (docs/methods.md, "Influence functions").

Two behaviours, neither of which changes the model (its weights go back as received):

* ``hvp`` (message type ``train.hvp``): the server sends the global weights θ̂ and a vector v
  (the extra ArrayRecord ``hvp-vector``, shaped like the weights); the client returns
  ``hvp`` = Σ_{i∈D_k} J_iᵀ Λ_i J_i v over its own rows, **unnormalised** (a sum, not a mean), and its
  n_k as ``num-examples``: the server divides Σ_k by n = Σ_k n_k, so no client needs to know n.
* ``lossgrad`` (message type ``train.lossgrad``): the client returns ``lossgrad`` =
  Σ_{i∈S_k} J_iᵀ g_i, the gradient of the summed loss over the rows it is given (a holder of
  forget data is sent ``only`` = the request, as PUF's forget role is: its forget samples S_k).

Both are float64 (the linear algebra is; :mod:`fedunlearn.influence`) and count one local epoch
(one pass over the rows: a jvp and a vjp per batch for ``hvp``, a vjp for ``lossgrad``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedunlearn.clients.request import ClientRequest, LocalRun
from fedunlearn.data import ClientData
from fedunlearn.influence import flat_params, forget_gradient, ggn_hvp, outputs

VECTOR, HVP, LOSSGRAD = "hvp-vector", "hvp", "lossgrad"  # the ArrayRecords' names
BATCH = 256


def shaped_like(model: nn.Module, flat: torch.Tensor) -> list[np.ndarray]:
    """A flat parameter vector as float64 arrays of the model's parameter shapes (the weights' order)."""
    out, start = [], 0
    for p in model.parameters():
        out.append(flat[start:start + p.numel()].reshape(p.shape).detach().cpu().numpy().astype(np.float64))
        start += p.numel()
    return out


def _mean_loss(model: nn.Module, params: torch.Tensor, data: ClientData) -> float:
    with torch.no_grad():
        logits = outputs(model, params, data.x_train)
        y = torch.as_tensor(data.y_train, dtype=torch.long, device=params.device)
        return float(nn.functional.cross_entropy(logits, y))


def hvp_behaviour(model: nn.Module, data: ClientData, request: ClientRequest) -> LocalRun:
    """Σ_i J_iᵀ Λ_i J_i v on this client's rows (unnormalised), v the ``hvp-vector`` sent."""
    params = flat_params(model).to(next(model.parameters()).device)
    v = torch.cat([torch.from_numpy(np.asarray(a, dtype=np.float64)).reshape(-1) for a in request.extra[VECTOR]])
    if v.numel() != params.numel():
        raise ValueError(f"hvp-vector has {v.numel()} entries, the model has {params.numel()} parameters")
    product = ggn_hvp(model, params, data.x_train, BATCH)(v.to(params)) * data.num_examples
    return LocalRun(_mean_loss(model, params, data), 1.0, {HVP: shaped_like(model, product)})


def lossgrad_behaviour(model: nn.Module, data: ClientData, request: ClientRequest) -> LocalRun:
    """Σ_i J_iᵀ g_i over this client's rows (its forget samples when sent ``only``)."""
    params = flat_params(model).to(next(model.parameters()).device)
    b = forget_gradient(model, params, data.x_train, data.y_train, BATCH)
    return LocalRun(_mean_loss(model, params, data), 1.0, {LOSSGRAD: shaped_like(model, b)})
