"""A lab's own parts, outside the fedunlearn package: a data set, a model and a strategy.

Experiments name them by import path (``data.name = "tests.parts.lab:blobs"``); the strategy is
also registered under a short name by one call in the test that uses it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from fedunlearn.arrays import Weights
from fedunlearn.data import Dataset
from fedunlearn.settings import require
from fedunlearn.strategies import Unlearner, UnlearningContext


@dataclass
class BlobSettings:
    samples: int = 600
    classes: int = 3

    def validate(self) -> None:
        require(self.classes >= 2, "classes", f"must be >= 2 (got {self.classes})")


def blobs(settings: BlobSettings, seed: int) -> Dataset:
    """Gaussian blobs in 5 dimensions, one per class, 80/20 split."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, settings.classes, settings.samples)
    centers = rng.normal(0, 3, (settings.classes, 5))
    x = (centers[y] + rng.normal(0, 1, (settings.samples, 5))).astype(np.float32)
    n_test = settings.samples // 5
    return Dataset(x[n_test:], y[n_test:].astype(np.int64), x[:n_test], y[:n_test].astype(np.int64), settings.classes)


blobs.Settings = BlobSettings


def blobs_labelled_beyond(settings: BlobSettings, seed: int) -> Dataset:
    """Blobs whose train labels run past num_classes: refused when loaded."""
    ds = blobs(settings, seed)
    ds.y_train = ds.y_train + settings.classes
    return ds


blobs_labelled_beyond.Settings = BlobSettings


def blobs_as_arrays(settings: BlobSettings, seed: int) -> tuple[np.ndarray, ...]:
    """The blobs as a tuple of arrays, not a Dataset: refused when loaded."""
    ds = blobs(settings, seed)
    return ds.x_train, ds.y_train, ds.x_test, ds.y_test


blobs_as_arrays.Settings = BlobSettings


@dataclass
class TinySettings:
    width: int = 7

    def validate(self) -> None:
        require(self.width >= 1, "width", f"must be >= 1 (got {self.width})")


def tiny_mlp(input_shape: tuple[int, ...], num_classes: int, settings: TinySettings) -> nn.Module:
    """Flatten -> Linear(width) -> ReLU -> Linear(classes)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), settings.width), nn.ReLU(),
                         nn.Linear(settings.width, num_classes))


tiny_mlp.Settings = TinySettings


def batchnorm_mlp(input_shape: tuple[int, ...], num_classes: int, settings: None) -> nn.Module:
    """Flatten -> Linear(8) -> BatchNorm1d -> ReLU -> Linear(classes): a model with buffers."""
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), 8), nn.BatchNorm1d(8), nn.ReLU(),
                         nn.Linear(8, num_classes))


def not_a_model(input_shape: tuple[int, ...], num_classes: int, settings: None) -> str:
    """The right signature, the wrong result: refused before training."""
    return "a model"


@dataclass
class ShrinkSettings:
    factor: float = 0.5

    def validate(self) -> None:
        require(0 < self.factor < 1, "factor", f"must be in (0, 1) (got {self.factor})")


class Shrink(Unlearner):
    """Scale every weight by (1 − factor), then recover: a crude forgetting step for the tests."""

    Settings = ShrinkSettings
    step_settings = ("factor",)

    def unlearn(self, ctx: UnlearningContext) -> Weights:
        ctx.notes["shrink"] = f"factor {self.settings.factor}"
        return [w * np.float32(1 - self.settings.factor) for w in ctx.weights]
