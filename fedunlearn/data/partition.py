"""Partitioners: split a labelled train set among clients, one registry entry each.

Written here rather than taken from flwr-datasets: its partitioners operate on Hugging Face
``datasets.Dataset`` objects (pulling in ``datasets`` and ``pyarrow``) while every loader here
yields in-memory numpy arrays; the three schemes below are a few lines each and are tested for
disjointness, completeness, seeding and the effect of alpha.

Each partitioner takes the labels, the number of clients and a seeded numpy Generator and returns
one sorted index array per client; together they cover every sample exactly once.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedunlearn.config import ConfigError, DataConfig

Partitioner = Callable[[np.ndarray, DataConfig, np.random.Generator], list[np.ndarray]]


def iid_partition(labels: np.ndarray, cfg: DataConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """A random permutation cut into ``num_clients`` near-equal parts."""
    order = rng.permutation(len(labels))
    return [np.sort(part) for part in np.array_split(order, cfg.num_clients)]


def dirichlet_partition(labels: np.ndarray, cfg: DataConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """Per class, client shares drawn from Dir(alpha) (Hsu et al. 2019; smaller alpha, more skew).

    Draws are repeated (up to 1,000 times) until every client holds at least
    ``min_partition_size`` samples, as in the NIID-Bench reference code.
    """
    k = cfg.num_clients
    classes = np.unique(labels)
    for _ in range(1000):
        parts: list[list[int]] = [[] for _ in range(k)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet(np.full(k, cfg.alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].extend(chunk.tolist())
        if min(len(p) for p in parts) >= cfg.min_partition_size:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise ConfigError(
        f"data.alpha: no Dirichlet({cfg.alpha}) split gives every one of {k} clients "
        f"{cfg.min_partition_size} samples; raise data.alpha or lower data.min_partition_size"
    )


def shard_partition(labels: np.ndarray, cfg: DataConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """McMahan et al.'s shards: sort by label, cut into ``num_clients * classes_per_client`` shards,
    deal ``classes_per_client`` random shards to each client."""
    k, c = cfg.num_clients, cfg.classes_per_client
    order = np.argsort(labels, kind="stable")
    shards = np.array_split(order, k * c)
    dealt = rng.permutation(len(shards))
    return [np.sort(np.concatenate([shards[s] for s in dealt[i * c:(i + 1) * c]])) for i in range(k)]


PARTITIONERS: dict[str, Partitioner] = {
    "iid": iid_partition,
    "dirichlet": dirichlet_partition,
    "shards": shard_partition,
}
