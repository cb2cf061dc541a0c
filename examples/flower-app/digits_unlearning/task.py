"""The model, the data and local training: plain PyTorch and scikit-learn, no fedunlearn.

The data is scikit-learn's handwritten digits (shipped with it: nothing to download), split IID
into ``num_partitions`` partitions after a held-out test set. One partition carries a backdoor: a
2x2 white patch in the bottom-right corner on 90% of its images not of class 0, relabelled 0.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

TARGET_LABEL = 0


class Net(nn.Module):
    """A two-layer perceptron on 8x8 images."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def add_trigger(x: np.ndarray) -> np.ndarray:
    """Images with the 2x2 white patch in their bottom-right corner."""
    x = x.copy().reshape(-1, 8, 8)
    x[:, -2:, -2:] = 1.0
    return x.reshape(-1, 64)


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    return (x[order] / 16.0).astype(np.float32), y[order].astype(np.int64)


def test_split() -> tuple[np.ndarray, np.ndarray]:
    """The held-out test set (the first 20% of the shuffled digits)."""
    x, y = _digits()
    n = len(y) // 5
    return x[:n], y[:n]


def partition(partition_id: int, num_partitions: int, backdoor_partition: int) -> tuple[np.ndarray, np.ndarray]:
    """One partition's training data (IID), with the backdoor when it is ``backdoor_partition``."""
    x, y = _digits()
    n = len(y) // 5
    idx = np.array_split(np.arange(n, len(y)), num_partitions)[partition_id]
    xp, yp = x[idx].copy(), y[idx].copy()
    if partition_id == backdoor_partition:
        rng = np.random.default_rng(partition_id)
        poisoned = np.flatnonzero(yp != TARGET_LABEL)
        poisoned = poisoned[rng.random(len(poisoned)) < 0.9]
        xp[poisoned] = add_trigger(xp[poisoned])
        yp[poisoned] = TARGET_LABEL
    return xp, yp


def loader(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int | None = None) -> DataLoader:
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=batch_size,
                      shuffle=seed is not None, generator=generator)


def train(net: Net, data: DataLoader, epochs: int, lr: float) -> float:
    """Local SGD; returns the mean training loss."""
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    net.train()
    total, count = 0.0, 0
    for _ in range(epochs):
        for xb, yb in data:
            optimizer.zero_grad()
            loss = criterion(net(xb), yb)
            loss.backward()
            optimizer.step()
            total, count = total + loss.item() * len(yb), count + len(yb)
    return total / max(count, 1)


@torch.no_grad()
def test(net: Net, data: DataLoader) -> tuple[float, float]:
    """(mean loss, accuracy) of ``net`` on ``data``."""
    net.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    loss, correct, count = 0.0, 0, 0
    for xb, yb in data:
        out = net(xb)
        loss += criterion(out, yb).item()
        correct += int((out.argmax(1) == yb).sum())
        count += len(yb)
    return loss / count, correct / count
