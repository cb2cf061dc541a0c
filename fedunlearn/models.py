"""Model registry: small PyTorch classifiers with no BatchNorm.

A model is a function ``(input_shape, num_classes, settings) -> nn.Module``; its settings are the
table named after it (``[model.cnn] hidden = 64``). A user's own model is named by its import path
(``model.name = "mylab.nets:resnet18"``) and follows the same signature.

Normalisation buffers (BatchNorm running statistics) are not trained parameters and have no
meaningful pseudo-gradient, so every model here uses GroupNorm or no normalisation: the state
dict holds parameters only and every entry of a pseudo-gradient is a weight delta.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedunlearn.config import ModelConfig
from fedunlearn.dilution import dilute_early
from fedunlearn.rbm import RBMSettings, rbm
from fedunlearn.registry import Part, Registry, check_tables
from fedunlearn.settings import ConfigError, require


@dataclass
class HiddenWidth:
    """``[model.mlp]`` / ``[model.cnn]``: the width of the last hidden layer."""

    hidden: int = 64

    def validate(self) -> None:
        require(self.hidden >= 1, "hidden", f"must be >= 1 (got {self.hidden})")


def mlp(input_shape: tuple[int, ...], num_classes: int, settings: HiddenWidth) -> nn.Module:
    """Flatten -> Linear(2·hidden) -> ReLU -> Linear(hidden) -> ReLU -> Linear(classes)."""
    n_in = int(np.prod(input_shape))
    h = settings.hidden
    return nn.Sequential(
        nn.Flatten(), nn.Linear(n_in, 2 * h), nn.ReLU(), nn.Linear(2 * h, h), nn.ReLU(), nn.Linear(h, num_classes)
    )


def cnn(input_shape: tuple[int, ...], num_classes: int, settings: HiddenWidth) -> nn.Module:
    """Two 3x3 conv blocks (16, 32 channels, each halving H and W), then a hidden dense layer.

    Fits 8x8 (digits), 28x28 (MNIST) and 32x32 (CIFAR-10) inputs.
    """
    if len(input_shape) != 3:
        raise ConfigError(f"model.name: cnn needs image inputs (C, H, W), got shape {input_shape}; use mlp")
    c, h, w = input_shape
    return nn.Sequential(
        nn.Conv2d(c, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * (h // 4) * (w // 4), settings.hidden), nn.ReLU(),
        nn.Linear(settings.hidden, num_classes),
    )


class _GNBlock(nn.Module):
    """Basic residual block with GroupNorm (He et al. 2016, BatchNorm replaced as in Hsieh et al. 2020)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.gn1 = nn.GroupNorm(min(8, c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.gn2 = nn.GroupNorm(min(8, c_out), c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.GroupNorm(min(8, c_out), c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.gn1(self.conv1(x)))
        return torch.relu(self.gn2(self.conv2(out)) + self.shortcut(x))


def resnet_gn(input_shape: tuple[int, ...], num_classes: int, settings: object) -> nn.Module:
    """A small ResNet (three stages of one block: 16, 32, 64 channels) with GroupNorm, for 32x32."""
    c = input_shape[0]
    return nn.Sequential(
        nn.Conv2d(c, 16, 3, 1, 1, bias=False), nn.GroupNorm(8, 16), nn.ReLU(),
        _GNBlock(16, 16, 1), _GNBlock(16, 32, 2), _GNBlock(32, 64, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes),
    )


def logreg(input_shape: tuple[int, ...], num_classes: int, settings: object) -> nn.Module:
    """Logistic regression: one linear layer on the flattened input (softmax cross-entropy in training).

    The convex model of the "ascent fails to forget" demonstration (docs/methods.md, "Ascent fails").
    """
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), num_classes))


MODELS: Registry = Registry("model", "model.name", call=("input_shape", "num_classes", "settings"))
MODELS.register("mlp", mlp, settings=HiddenWidth)
MODELS.register("cnn", cnn, settings=HiddenWidth)
MODELS.register("resnet_gn", resnet_gn)
MODELS.register("logreg", logreg)
MODELS.register("rbm", rbm, settings=RBMSettings)


def model_part(cfg: ModelConfig) -> Part:
    """The model the config names, every ``[model.NAME]`` table checked (ConfigError if bad)."""
    part = MODELS.get(cfg.name)
    check_tables(cfg.settings, [part], [MODELS], "model.")
    return part


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int, seed: int) -> nn.Module:
    """Instantiate the configured model with weights initialised from ``seed``.

    With ``[model.dilution] mode = "early"`` the model is built diluted: the pruned coordinates of
    the seeded mask start at 0 (:func:`fedunlearn.dilution.dilute_early`).
    """
    part = model_part(cfg)
    settings = part.build_settings(cfg.settings, "model.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = part.obj(input_shape, num_classes, settings)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.name: {cfg.name!r} returned {type(model).__name__}, not a torch.nn.Module")
    dilute_early(model, cfg.dilution, seed)
    return model
