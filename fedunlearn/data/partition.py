"""Partitioners: split a labelled train set among clients, one registry entry each.

Written here rather than taken from flwr-datasets: its partitioners operate on Hugging Face
``datasets.Dataset`` objects (pulling in ``datasets`` and ``pyarrow``) while every loader here
yields in-memory numpy arrays; the three schemes below are a few lines each and are tested for
disjointness, completeness, seeding and the effect of alpha.

Each partitioner takes the labels, the number of clients, its settings and a seeded numpy
Generator and returns one sorted index array per client; together they cover every sample exactly
once. Its settings are the table named after it (``[data.dirichlet] alpha = 0.5``). A partitioner
whose attribute ``by_group`` is true is also given the data set's per-sample groups (``groups=``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedunlearn.settings import ConfigError, require


def iid_partition(labels: np.ndarray, num_clients: int, settings: Any, rng: np.random.Generator) -> list[np.ndarray]:
    """A random permutation cut into ``num_clients`` near-equal parts."""
    order = rng.permutation(len(labels))
    return [np.sort(part) for part in np.array_split(order, num_clients)]


@dataclass
class DirichletSettings:
    """``[data.dirichlet]``: concentration ``alpha`` and the fewest samples a client may hold."""

    alpha: float = 0.5
    min_partition_size: int = 10

    def validate(self) -> None:
        require(self.alpha > 0, "alpha", f"must be > 0 (got {self.alpha})")
        require(self.min_partition_size >= 1, "min_partition_size",
                f"must be >= 1 (got {self.min_partition_size}); every client needs training data")


def dirichlet_partition(labels: np.ndarray, num_clients: int, settings: DirichletSettings,
                        rng: np.random.Generator) -> list[np.ndarray]:
    """Per class, client shares drawn from Dir(alpha) (Hsu et al. 2019; smaller alpha, more skew).

    Draws are repeated (up to 1,000 times) until every client holds at least
    ``min_partition_size`` samples, as in the NIID-Bench reference code.
    """
    k, alpha = num_clients, settings.alpha
    classes = np.unique(labels)
    for _ in range(1000):
        parts: list[list[int]] = [[] for _ in range(k)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet(np.full(k, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].extend(chunk.tolist())
        if min(len(p) for p in parts) >= settings.min_partition_size:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise ConfigError(
        f"data.dirichlet.alpha: no Dirichlet({alpha}) split gives every one of {k} clients "
        f"{settings.min_partition_size} samples; raise alpha or lower min_partition_size in [data.dirichlet]"
    )


@dataclass
class ShardSettings:
    """``[data.shards]``: how many label-sorted shards each client is dealt."""

    classes_per_client: int = 2

    def validate(self) -> None:
        require(self.classes_per_client >= 1, "classes_per_client", f"must be >= 1 (got {self.classes_per_client})")


def shard_partition(labels: np.ndarray, num_clients: int, settings: ShardSettings,
                    rng: np.random.Generator) -> list[np.ndarray]:
    """McMahan et al.'s shards: sort by label, cut into ``num_clients * classes_per_client`` shards,
    deal ``classes_per_client`` random shards to each client."""
    k, c = num_clients, settings.classes_per_client
    order = np.argsort(labels, kind="stable")
    shards = np.array_split(order, k * c)
    dealt = rng.permutation(len(shards))
    return [np.sort(np.concatenate([shards[s] for s in dealt[i * c:(i + 1) * c]])) for i in range(k)]


@dataclass
class GroupedSettings:
    """``[data.grouped]``: the client that holds each sample group (group g >= 1 goes to ``clients[g - 1]``)."""

    clients: list[int] = field(default_factory=lambda: [0])

    def validate(self) -> None:
        require(bool(self.clients) and min(self.clients) >= 0 and len(set(self.clients)) == len(self.clients),
                "clients", f"must be distinct client ids >= 0, one per sample group (got {self.clients})")


def grouped_partition(labels: np.ndarray, num_clients: int, settings: GroupedSettings, rng: np.random.Generator,
                      groups: np.ndarray | None = None) -> list[np.ndarray]:
    """Every sample of group g >= 1 on client ``clients[g - 1]`` alone; group 0 split IID among the others.

    ``groups`` is the data set's per-sample group (``Dataset.groups``, e.g. the forget data of
    ``dependent``; docs/methods.md, "Ascent fails"); without it every sample is group 0.
    """
    groups = np.zeros(len(labels), np.int64) if groups is None else np.asarray(groups)
    pinned = settings.clients
    if max(pinned) >= num_clients:
        raise ConfigError(f"data.grouped.clients: client {max(pinned)} does not exist ({num_clients} clients); "
                          "choose ids below data.num_clients")
    if groups.max(initial=0) > len(pinned):
        raise ConfigError(f"data.grouped.clients: the data set has {int(groups.max())} sample groups and "
                          f"clients names {len(pinned)}; give one client per group")
    others = [c for c in range(num_clients) if c not in pinned]
    if not others:
        raise ConfigError("data.grouped.clients: names every client; leave some for the ungrouped samples")
    parts: list[np.ndarray] = [np.zeros(0, np.int64)] * num_clients
    for g, client in enumerate(pinned, start=1):
        parts[client] = np.flatnonzero(groups == g)
    order = rng.permutation(np.flatnonzero(groups == 0))
    for client, part in zip(others, np.array_split(order, len(others)), strict=True):
        parts[client] = np.sort(part)
    return parts


grouped_partition.Settings = GroupedSettings
grouped_partition.by_group = True  # partition() passes the data set's groups

dirichlet_partition.Settings = DirichletSettings
shard_partition.Settings = ShardSettings
