"""NoT: unlearning by weight negation (after Khalil et al.; docs/methods.md, "Forgetting").

The unlearning step multiplies the chosen tensors of the global model by −1,

    W_l ← −W_l   for every l in ``layers``,

every other tensor untouched; recovery rounds (FedAvg over the remaining data) follow as for the
other methods. ``layers`` (``[forgetting.not]``) names tensors by state-dict index (``0``) or
name (``"0.weight"``); empty (the default) is the first weight tensor of the model: the first
tensor with two or more dimensions (the first layer's weight matrix or kernel, not a bias). The
negation needs no data and no client, so NoT serves every request kind: what is forgotten is
decided by the recovery rounds, which train on what remains.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fedunlearn.arrays import Weights
from fedunlearn.config import ExperimentConfig
from fedunlearn.data import source_dataset
from fedunlearn.models import build_model
from fedunlearn.settings import ConfigError, require
from fedunlearn.strategies.base import Unlearner, UnlearningContext

FIELD = "forgetting.not.layers"


@dataclass
class NoTSettings:
    """``[forgetting.not]``: the tensors to negate, by state-dict index or name (empty: the first weight tensor)."""

    layers: list[int | str] = field(default_factory=list)

    def validate(self) -> None:
        for layer in self.layers:
            require(not isinstance(layer, int) or layer >= 0, "layers",
                    f"an index must be >= 0 (got {layer}); indices count the model's state dict from 0")
            require(not isinstance(layer, str) or bool(layer.strip()), "layers",
                    "a name must not be empty; name a state-dict entry such as \"0.weight\"")
        require(len(set(self.layers)) == len(self.layers), "layers", f"names a tensor twice ({self.layers})")


def first_weight(weights: Weights) -> int:
    """The index of the first tensor with two or more dimensions (0 when there is none)."""
    return next((i for i, w in enumerate(weights) if w.ndim >= 2), 0)


def layer_indices(layers: Sequence[int | str], network: Weights, names: Sequence[str] | None = None) -> list[int]:
    """The indices ``layers`` names among the tensors of ``network`` (empty: :func:`first_weight`).

    ``names`` are the state-dict names of those tensors (needed only when ``layers`` holds a
    name). Raises ConfigError naming ``forgetting.not.layers`` for an unknown name or index.
    """
    if not layers:
        return [first_weight(network)]
    out = []
    for layer in layers:
        if isinstance(layer, int):
            if layer >= len(network):
                raise ConfigError(f"{FIELD}: index {layer} is out of range; the model has {len(network)} tensors "
                                  f"(0..{len(network) - 1})")
            out.append(layer)
        else:
            if names is None or layer not in names:
                known = ", ".join(names) if names is not None else "unknown"
                raise ConfigError(f"{FIELD}: {layer!r} is not a tensor of the model; its state-dict names are {known}")
            out.append(list(names).index(layer))
    return sorted(set(out))


def negate(weights: Weights, indices: Sequence[int]) -> Weights:
    """``weights`` with the tensors at ``indices`` multiplied by −1 (copies; the others untouched)."""
    chosen = set(indices)
    return [(-w if i in chosen else w).astype(np.float32, copy=True) for i, w in enumerate(weights)]


def tensor_shapes(cfg: ExperimentConfig) -> dict[str, tuple[int, ...]]:
    """The state-dict names and shapes of the experiment's model, in order."""
    data = source_dataset(cfg.data, cfg.seed)
    model = build_model(cfg.model, data.input_shape, data.num_classes, cfg.seed)
    return {k: tuple(t.shape) for k, t in model.state_dict().items()}


class NoT(Unlearner):
    """The chosen tensors negated; recovery follows (serves client, samples and class requests)."""

    Settings = NoTSettings

    def refuses(self, cfg: ExperimentConfig) -> str:
        """An unknown layer is refused before training, naming ``forgetting.not.layers`` (ConfigError)."""
        layers = self.settings.layers if self.settings is not None else []
        if layers:
            shapes = tensor_shapes(cfg)
            layer_indices(layers, [np.zeros(s) for s in shapes.values()], list(shapes))
        return ""

    def unlearn(self, ctx: UnlearningContext) -> Weights:
        layers = self.settings.layers if self.settings is not None else []
        network = ctx.init_weights  # the network's tensors (an output filter's matrix is never negated)
        names = list(tensor_shapes(ctx.cfg)) if any(isinstance(x, str) for x in layers) else None
        indices = layer_indices(layers, network, names)
        ctx.notes["not_layers"] = ", ".join(
            f"{i}{' (' + names[i] + ')' if names else ''} {'x'.join(map(str, network[i].shape))}" for i in indices)
        return negate(ctx.weights, indices)
