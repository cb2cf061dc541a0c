"""The relearning probe's ``alone`` mode on the client: one SGD step per Flower round.

A probe of S steps is S rounds; in round s (``probe-step`` = s) the client takes step s of ONE
continuous local SGD run (:func:`fedunlearn.training.train_local` with ``seed = probe-seed``) on
the data it is told to train on (its forget samples: the ``only`` config key), from the model it
is sent, at ``probe-lr`` with the training ``momentum`` and ``batch-size``:

* the batch of step s is batch s mod B of epoch s // B (B batches per epoch), each epoch's
  permutation drawn from a generator seeded with ``probe-seed`` exactly as ``train_local`` draws
  them, not a fresh shuffle each round;
* the momentum buffer is carried between the rounds of one probe in the node's Flower
  ``Context.state`` (persisted per node within a run), under a key naming the probe
  (``probe-id``) and the step it follows; step 0 starts from none and drops any other probe's
  buffer, the last step (``probe-steps`` − 1) keeps none.

With one client and FedAvg over it, the rounds retrace the continuous run (up to the rounding of
the server's w + (w' − w)).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from torch import nn

from fedunlearn.clients.request import ClientRequest, LocalRun
from fedunlearn.data import ClientData
from fedunlearn.training import model_device

STATE_PREFIX = "probe-momentum:"  # Context.state keys: probe-momentum:<probe id>:<last step taken>


def step_batch(n: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """The sample indices of SGD step ``step`` of ``train_local(seed=seed)`` on ``n`` samples."""
    per_epoch = -(-n // batch_size)
    epoch, k = divmod(step, per_epoch)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epoch):  # train_local draws one permutation per epoch from one generator
        torch.randperm(n, generator=gen)
    return torch.randperm(n, generator=gen).split(batch_size)[k]


def state_key(probe_id: str, step: int) -> str:
    return f"{STATE_PREFIX}{probe_id}:{step}"


def probe_behaviour(model: nn.Module, data: ClientData, request: ClientRequest) -> LocalRun:
    """Step ``probe-step`` of the client's continuous probe SGD run (see the module docstring)."""
    c, state = request.config, request.state
    step, steps = int(c["probe-step"]), int(c["probe-steps"])
    probe_id, batch_size = str(c["probe-id"]), int(c["batch-size"])
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=float(c["probe-lr"]), momentum=float(c["momentum"]))
    device = model_device(model)
    if step == 0:
        for key in [k for k in state if k.startswith(STATE_PREFIX)]:  # an earlier probe's, if it stopped early
            del state[key]
    else:
        key = state_key(probe_id, step - 1)
        if key not in state:
            raise RuntimeError(f"probe {probe_id}: step {step} finds no momentum from step {step - 1} in this node's "
                               "Context.state (the node lost its state, or a round was skipped)")
        for i, buf in state.pop(key).items():
            opt.state[params[int(i)]]["momentum_buffer"] = torch.from_numpy(buf.numpy().copy()).to(device)

    xt, yt = torch.from_numpy(data.x_train).to(device), torch.from_numpy(data.y_train).to(device)
    batch = step_batch(len(yt), batch_size, int(c["probe-seed"]), step).to(device)
    model.train()
    opt.zero_grad(set_to_none=True)
    loss = request.objective(model, xt[batch], yt[batch])
    loss.backward()
    opt.step()

    if step < steps - 1:
        buffers = OrderedDict((str(i), Array(np.ascontiguousarray(s["momentum_buffer"].detach().cpu().numpy())))
                              for i, p in enumerate(params)
                              if (s := opt.state.get(p)) and s.get("momentum_buffer") is not None)
        state[state_key(probe_id, step)] = ArrayRecord(array_dict=buffers)
    return LocalRun(float(loss.detach()), 1 / -(-len(yt) // batch_size))
