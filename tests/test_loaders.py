"""Every data set loader, the torchvision ones on tiny files written here in the real formats."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from fedunlearn.config import DataConfig
from fedunlearn.data import DATASETS, build_federated_data
from fedunlearn.settings import ConfigError, build_settings


def write_idx(path: Path, array: np.ndarray) -> None:
    """The IDX format of MNIST: magic (0, 0, dtype 0x08, ndim), big-endian dims, then the bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist_like(root: Path, folder: str, n_train=40, n_test=12) -> None:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)


def write_cifar(root: Path, n_per_batch=8) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 b"labels": [i % 10 for i in range(n_per_batch)]}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh)


def load_with(name: str, table: dict):
    """The registered loader and its settings built from ``table``, as an experiment's [data.NAME] does."""
    part = DATASETS.get(name)
    return part.obj, build_settings(part.settings, table, f"data.{name}.")


def test_digits_is_the_real_handwritten_digits():
    ds = DATASETS.factory("digits")(None, 0)
    assert ds.x_train.shape[1:] == (1, 8, 8) and len(ds.y_train) + len(ds.y_test) == 1797
    assert ds.x_train.min() >= 0 and ds.x_train.max() <= 1 and ds.num_classes == 10


def test_synthetic_is_seeded():
    load, settings = load_with("synthetic", {"samples": 300, "features": 6, "classes": 3})
    a, b, c = load(settings, 0), load(settings, 0), load(settings, 1)
    assert a.x_train.shape == (240, 6) and set(np.unique(a.y_train)) == {0, 1, 2}
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_train, c.x_train)


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_torchvision_idx_loaders_on_tiny_files(tmp_path, name, folder):
    write_mnist_like(tmp_path, folder)
    load, settings = load_with(name, {"root": str(tmp_path)})
    ds = load(settings, 0)
    assert ds.x_train.shape == (40, 1, 28, 28) and ds.x_test.shape == (12, 1, 28, 28)
    assert ds.x_train.dtype == np.float32 and 0 <= ds.x_train.min() and ds.x_train.max() <= 1
    assert ds.y_train.tolist() == [i % 10 for i in range(40)]
    # The whole federation builds on it.
    fd = build_federated_data(DataConfig(name=name, num_clients=4, partition="iid",
                                         settings={name: {"root": str(tmp_path)}}), 0)
    assert sum(c.num_examples for c in fd.clients) == 40


def test_cifar10_reads_the_pickle_batches(tmp_path):
    write_cifar(tmp_path)
    load, settings = load_with("cifar10", {"root": str(tmp_path)})
    ds = load(settings, 0)
    assert ds.x_train.shape == (40, 3, 32, 32) and ds.x_test.shape == (8, 3, 32, 32)
    assert ds.y_test.tolist() == list(range(8))


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10"])
def test_missing_files_give_one_clear_error(tmp_path, name):
    load, settings = load_with(name, {"root": str(tmp_path)})
    with pytest.raises(ConfigError, match=f"data.{name}.root: .*not found"):
        load(settings, 0)
    with pytest.raises(ConfigError, match=f"data.{name}.root: this data set needs a local folder"):
        load_with(name, {})
    with pytest.raises(ConfigError, match=f"data.{name}.root: folder .* does not exist"):
        load_with(name, {"root": str(tmp_path / "missing")})
