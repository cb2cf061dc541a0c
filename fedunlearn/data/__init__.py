"""Data for a federation: the data set and partitioner registries, and the per-client split.

:func:`federated_data` is deterministic in (config, seed) and cached, so the server (for
evaluation) and every client actor (for training) rebuild exactly the same partitions without
shipping data through Flower messages. A data set is a function ``(settings, seed) -> Dataset``
and a partitioner ``(labels, num_clients, settings, rng) -> [indices]``; either may be named by an
import path ``module:attr`` instead of a registered name.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fedunlearn.config import DataConfig, config_to_dict
from fedunlearn.data import partition, sources
from fedunlearn.data.backdoor import attack_set, poison
from fedunlearn.data.sources import Dataset
from fedunlearn.registry import Part, Registry, check_tables
from fedunlearn.settings import ConfigError, build

__all__ = ["DATASETS", "PARTITIONERS", "ClientData", "Dataset", "FederatedData", "federated_data"]

DATASETS: Registry = Registry("data set", "data.name", call=("settings", "seed"))
DATASETS.register("digits", sources.load_digits_dataset)
DATASETS.register("synthetic", sources.load_synthetic_dataset)
DATASETS.register("mnist", sources._torchvision_loader("MNIST", "mnist"))
DATASETS.register("fashion-mnist", sources._torchvision_loader("FashionMNIST", "fashion-mnist"))
DATASETS.register("cifar10", sources.load_cifar10_dataset)
DATASETS.register("dependent", sources.load_dependent_dataset)

PARTITIONERS: Registry = Registry("partitioner", "data.partition", call=("labels", "num_clients", "settings", "rng"))
PARTITIONERS.register("iid", partition.iid_partition)
PARTITIONERS.register("dirichlet", partition.dirichlet_partition)
PARTITIONERS.register("shards", partition.shard_partition)
PARTITIONERS.register("grouped", partition.grouped_partition)


@dataclass
class ClientData:
    """One client's local train data; ``poisoned`` indexes the backdoored samples."""

    x_train: np.ndarray
    y_train: np.ndarray
    poisoned: np.ndarray

    @property
    def num_examples(self) -> int:
        return len(self.y_train)

    def subset(self, indices: np.ndarray) -> ClientData:
        """The samples at ``indices`` (sorted), ``poisoned`` renumbered into the subset."""
        return ClientData(self.x_train[indices], self.y_train[indices],
                          np.flatnonzero(np.isin(indices, self.poisoned)))


class ClientPartitions(Sequence):
    """Every client's :class:`ClientData`, cut from the data set when first asked for.

    A client actor trains a few clients of a large federation: cutting (and, for backdoor clients,
    poisoning) a client's samples only when it is asked for spares a second copy of the whole
    training set per process. The last :attr:`CACHED` clients cut are kept (in a federation of
    at most that many, all of them). Used from one thread: the cache is not locked.
    """

    CACHED = 256

    def __init__(self, ds: Dataset, parts: list[np.ndarray], backdoor, seed: int) -> None:
        self._ds, self._parts, self._backdoor, self._seed = ds, parts, backdoor, seed
        self._cache: OrderedDict[int, ClientData] = OrderedDict()

    def __len__(self) -> int:
        return len(self._parts)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = range(len(self))[i]  # IndexError past the end, negative indices counted from it
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        client = self._cut(i)
        self._cache[i] = client
        if len(self._cache) > self.CACHED:
            self._cache.popitem(last=False)
        return client

    def _cut(self, i: int) -> ClientData:
        idx, b = self._parts[i], self._backdoor
        x, y, poisoned = self._ds.x_train[idx], self._ds.y_train[idx], np.zeros(0, dtype=np.int64)
        if i in b.clients:
            client_rng = np.random.default_rng([self._seed, i])
            client_rng.permutation(len(idx))  # the draw of the former local test split: same poisoned samples
            x, y, poisoned = poison(x, y, b, client_rng)
        return ClientData(x, y, poisoned)


@dataclass
class FederatedData:
    """The clients' partitions plus the global test set (and, with a backdoor, its attack set)."""

    clients: Sequence[ClientData]
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]
    x_attack: np.ndarray | None = None
    y_attack: np.ndarray | None = None
    backdoored: list[int] = field(default_factory=list)
    x_val: np.ndarray | None = None  # the validation split (``data.validation``), held out of every client
    y_val: np.ndarray | None = None

    def union(self, clients: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Concatenated train data of ``clients``."""
        return (np.concatenate([self.clients[c].x_train for c in clients]),
                np.concatenate([self.clients[c].y_train for c in clients]))


def data_parts(cfg: DataConfig) -> tuple[Part, Part]:
    """The data set and partitioner the config names, every ``[data.NAME]`` table checked (ConfigError if bad)."""
    source, splitter = DATASETS.get(cfg.name), PARTITIONERS.get(cfg.partition)
    check_tables(cfg.settings, [source, splitter], [DATASETS, PARTITIONERS], "data.")
    return source, splitter


def source_dataset(cfg: DataConfig, seed: int) -> Dataset:
    """The data set ``cfg`` names, loaded but not partitioned or poisoned (no client rule needed)."""
    return _load(data_parts(cfg)[0], cfg, seed)


def validation_split(labels: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(validation, pool): sorted train indices, ``share`` of every class held out (rounded), seeded by ``seed``.

    Drawn with its own Generator, so with ``share = 0`` (pool = every index) the partition is what
    it was without a validation split (docs/methods.md, "Evaluation").
    """
    if share <= 0:
        return np.zeros(0, dtype=np.int64), np.arange(len(labels))
    rng = np.random.default_rng([seed, 0x7A1])
    held = [rng.permutation(idx)[:int(round(share * len(idx)))]
            for idx in (np.flatnonzero(labels == c) for c in np.unique(labels))]
    val = np.sort(np.concatenate(held)).astype(np.int64)
    return val, np.setdiff1d(np.arange(len(labels)), val)


def partition(cfg: DataConfig, seed: int) -> tuple[Dataset, list[np.ndarray]]:
    """The data set and each client's train indices (a Generator seeded by ``seed``); none may be empty.

    The validation split (``data.validation``) is held out first; the partitioner splits the rest.
    """
    source, splitter = data_parts(cfg)
    ds = _load(source, cfg, seed)
    _, pool = validation_split(ds.y_train, cfg.validation, seed)
    labels, groups = ds.y_train[pool], (ds.groups[pool] if ds.groups is not None else None)
    rng = np.random.default_rng(seed)
    settings = splitter.build_settings(cfg.settings, "data.")
    if getattr(splitter.obj, "by_group", False):  # it places samples by the data set's groups
        if groups is None:
            raise ConfigError(f"data.partition: {cfg.partition!r} places samples by group and data set {cfg.name!r} "
                              "has none; use a data set with groups (dependent) or another partitioner")
        parts = splitter.obj(labels, cfg.num_clients, settings, rng, groups=groups)
    else:
        parts = splitter.obj(labels, cfg.num_clients, settings, rng)
    parts = [pool[np.asarray(idx, dtype=np.int64)] for idx in parts]  # pool positions -> train indices
    empty = [i for i, idx in enumerate(parts) if len(idx) == 0]
    if empty:
        raise ConfigError(f"data.num_clients: client {empty[0]} gets no training sample ({len(empty)} such clients of "
                          f"{cfg.num_clients}, {len(ds.y_train)} samples); lower num_clients or change the partitioner")
    return ds, parts


def _load(source: Part, cfg: DataConfig, seed: int) -> Dataset:
    ds = _loaded(json.dumps({"name": cfg.name, "settings": cfg.settings.get(source.name, {}), "seed": seed},
                            sort_keys=True))
    return binarized(ds, cfg.binarize) if cfg.binarize > 0 else ds


def binarized(ds: Dataset, threshold: float) -> Dataset:
    """``ds`` with every feature set to 1.0 where it is >= ``threshold`` and 0.0 elsewhere (``data.binarize``)."""
    def cut(x: np.ndarray) -> np.ndarray:
        return (x >= threshold).astype(np.float32)

    return dataclasses.replace(ds, x_train=cut(ds.x_train), x_test=cut(ds.x_test))


@functools.lru_cache(maxsize=2)
def _loaded(key: str) -> Dataset:
    """A data set loaded once per process and key (resolving client rules and building data share it)."""
    raw = json.loads(key)
    source = DATASETS.get(raw["name"])
    return checked(source.obj(source.build_settings({source.name: raw["settings"]}, "data."), raw["seed"]), raw["name"])


def checked(ds: object, name: str) -> Dataset:
    """``ds`` if it is a Dataset whose labels fit its classes; else ConfigError naming ``data.name``.

    A user's data set that breaks this would otherwise fail far from its cause: an AttributeError
    while partitioning, or a label beyond the classes inside a client's cross-entropy, after Ray started.
    """
    if not isinstance(ds, Dataset):
        raise ConfigError(f"data.name: {name!r} returned {type(ds).__name__}, not a fedunlearn.data.Dataset")
    for split, x, y in (("train", ds.x_train, ds.y_train), ("test", ds.x_test, ds.y_test)):
        if len(x) != len(y):
            raise ConfigError(f"data.name: {name!r} returned {len(x)} {split} inputs and {len(y)} labels; "
                              "give one label per input")
        if len(y) and not (0 <= y.min() and y.max() < ds.num_classes):
            raise ConfigError(f"data.name: {name!r} returned {split} labels in {y.min()}..{y.max()} with num_classes "
                              f"= {ds.num_classes}; labels must be in 0..num_classes - 1")
    return ds


def build_federated_data(cfg: DataConfig, seed: int) -> FederatedData:
    """Load the data set, hold out the validation split, partition the rest with a Generator seeded by
    ``seed``, poison backdoor clients (never the validation split)."""
    b = cfg.backdoor
    if any(isinstance(c, str) for c in b.clients):
        raise ConfigError("data.backdoor.clients: rules must be resolved per seed first (fedunlearn.parts.for_seed)")
    ds, parts = partition(cfg, seed)
    if b.clients and b.target_label >= ds.num_classes:
        raise ConfigError(f"data.backdoor.target_label: {b.target_label} is not a class of {cfg.name} "
                          f"(0..{ds.num_classes - 1})")
    clients = ClientPartitions(ds, parts, b, seed)
    fd = FederatedData(clients, ds.x_test, ds.y_test, ds.num_classes, ds.input_shape, backdoored=sorted(b.clients))
    if cfg.validation > 0:
        val, _ = validation_split(ds.y_train, cfg.validation, seed)
        fd.x_val, fd.y_val = ds.x_train[val], ds.y_train[val]
    if b.clients and b.patch_size > 0:  # no trigger, no attack to measure
        fd.x_attack, fd.y_attack = attack_set(ds.x_test, ds.y_test, b)
    return fd


@functools.lru_cache(maxsize=4)
def _cached(key: str) -> FederatedData:
    raw = json.loads(key)
    return build_federated_data(build(DataConfig, raw["data"], "data."), raw["seed"])


def data_key(cfg: DataConfig, seed: int) -> str:
    """A canonical string naming a federation's data: equal keys build identical data."""
    return json.dumps({"data": config_to_dict(cfg), "seed": seed}, sort_keys=True)


def federated_data(cfg: DataConfig, seed: int) -> FederatedData:
    """Cached :func:`build_federated_data` (one build per process and key)."""
    return _cached(data_key(cfg, seed))
