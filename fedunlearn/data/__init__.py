"""Data for a federation: a registry of data sets and partitioners, and the per-client split.

:func:`federated_data` is deterministic in (config, seed) and cached, so the server (for
evaluation) and every client actor (for training) rebuild exactly the same partitions without
shipping data through Flower messages.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import numpy as np

from fedunlearn.config import DataConfig, config_from_dict, config_to_dict
from fedunlearn.data.backdoor import attack_set, poison
from fedunlearn.data.partition import PARTITIONERS
from fedunlearn.data.sources import DATASETS, Dataset

__all__ = ["DATASETS", "PARTITIONERS", "ClientData", "FederatedData", "federated_data"]


@dataclass
class ClientData:
    """One client's local data; ``poisoned`` indexes the backdoored samples of ``x_train``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    poisoned: np.ndarray

    @property
    def num_examples(self) -> int:
        return len(self.y_train)


@dataclass
class FederatedData:
    """The clients' partitions plus the global test set (and, with a backdoor, its attack set)."""

    clients: list[ClientData]
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]
    x_attack: np.ndarray | None = None
    y_attack: np.ndarray | None = None

    def retain_set(self, forgotten: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Concatenated train data of every client not in ``forgotten``."""
        keep = [c for i, c in enumerate(self.clients) if i not in set(forgotten)]
        return np.concatenate([c.x_train for c in keep]), np.concatenate([c.y_train for c in keep])


def _split_client(ds: Dataset, idx: np.ndarray, cfg: DataConfig, client: int,
                  rng: np.random.Generator) -> ClientData:
    x, y = ds.x_train[idx], ds.y_train[idx]
    n_test = int(round(cfg.local_test_fraction * len(idx)))
    order = rng.permutation(len(idx))
    test_i, train_i = np.sort(order[:n_test]), np.sort(order[n_test:])
    x_tr, y_tr = x[train_i], y[train_i]
    poisoned = np.zeros(0, dtype=np.int64)
    if client in cfg.backdoor.clients:
        x_tr, y_tr, poisoned = poison(x_tr, y_tr, cfg.backdoor, rng)
    return ClientData(x_tr, y_tr, x[test_i], y[test_i], poisoned)


def build_federated_data(cfg: DataConfig, seed: int) -> FederatedData:
    """Load the data set, partition it with a Generator seeded by ``seed``, poison backdoor clients."""
    ds = DATASETS[cfg.name](cfg, seed)
    rng = np.random.default_rng(seed)
    parts = PARTITIONERS[cfg.partition](ds.y_train, cfg, rng)
    clients = [_split_client(ds, idx, cfg, i, np.random.default_rng([seed, i])) for i, idx in enumerate(parts)]
    fd = FederatedData(clients, ds.x_test, ds.y_test, ds.num_classes, ds.input_shape)
    if cfg.backdoor.clients and cfg.backdoor.patch_size > 0:  # no trigger, no attack to measure
        fd.x_attack, fd.y_attack = attack_set(ds.x_test, ds.y_test, cfg.backdoor)
    return fd


@functools.lru_cache(maxsize=4)
def _cached(key: str) -> FederatedData:
    raw = json.loads(key)
    cfg = config_from_dict({"data": raw["data"]}).data
    return build_federated_data(cfg, raw["seed"])


def data_key(cfg: DataConfig, seed: int) -> str:
    """A canonical string naming a federation's data: equal keys build identical data."""
    return json.dumps({"data": config_to_dict(cfg), "seed": seed}, sort_keys=True)


def federated_data(cfg: DataConfig, seed: int) -> FederatedData:
    """Cached :func:`build_federated_data` (one build per process and key)."""
    return _cached(data_key(cfg, seed))
