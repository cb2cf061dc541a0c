"""Data set loaders, one registry entry each.

Every loader returns a :class:`Dataset`: float32 features (N, C, H, W) for images or (N, F) for
tabular data, int64 labels, and a fixed train/test split. Nothing is downloaded unless the
configuration asks for it (``data.download = true``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedunlearn.config import ConfigError, DataConfig


@dataclass
class Dataset:
    """A labelled train/test split held in memory."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def load_digits_dataset(cfg: DataConfig, seed: int) -> Dataset:
    """scikit-learn's handwritten digits (1,797 8x8 images shipped with the package), 75/25 split.

    Pixel values 0..16 are scaled to [0, 1]. The split is stratified and fixed (seed 0) so the
    global test set is the same whatever the experiment seed.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)
    return Dataset(x_tr, y_tr, x_te, y_te, 10)


def load_synthetic_dataset(cfg: DataConfig, seed: int) -> Dataset:
    """Seeded Gaussian-cluster classification (scikit-learn ``make_classification``), 80/20 split."""
    from sklearn.datasets import make_classification

    n_informative = max(2, min(cfg.synthetic_features, cfg.synthetic_classes * 2))
    x, y = make_classification(
        n_samples=cfg.synthetic_samples,
        n_features=cfg.synthetic_features,
        n_informative=n_informative,
        n_redundant=0,
        n_classes=cfg.synthetic_classes,
        n_clusters_per_class=1,
        class_sep=1.5,
        random_state=seed,
    )
    n_test = len(y) // 5
    return Dataset(
        x[n_test:].astype(np.float32), y[n_test:].astype(np.int64),
        x[:n_test].astype(np.float32), y[:n_test].astype(np.int64),
        cfg.synthetic_classes,
    )


def _torchvision_root(cfg: DataConfig) -> Path:
    if not cfg.root:
        raise ConfigError(f"data.root: {cfg.name} needs a local folder; set data.root = \"/path/to/data\"")
    root = Path(cfg.root).expanduser()
    if not root.is_dir() and not cfg.download:
        raise ConfigError(f"data.root: folder {str(root)!r} does not exist; create it or set data.download = true")
    return root


def _as_images(data: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W) or (N, H, W, C) -> float32 (N, C, H, W) in [0, 1]."""
    x = np.asarray(data, dtype=np.float32) / 255.0
    if x.ndim == 3:
        return x[:, None, :, :]
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _torchvision_loader(class_name: str) -> Callable[[DataConfig, int], Dataset]:
    def load(cfg: DataConfig, seed: int) -> Dataset:
        import torchvision.datasets as tvd

        root = _torchvision_root(cfg)
        cls = getattr(tvd, class_name)
        try:
            train = cls(str(root), train=True, download=cfg.download)
            test = cls(str(root), train=False, download=cfg.download)
        except RuntimeError as err:  # torchvision's "Dataset not found or corrupted"
            raise ConfigError(
                f"data.root: {class_name} files not found under {str(root)!r} ({err}); "
                "put the data set there or set data.download = true"
            ) from None
        x_tr, x_te = _as_images(train.data), _as_images(test.data)
        y_tr = np.asarray(train.targets, dtype=np.int64)
        y_te = np.asarray(test.targets, dtype=np.int64)
        return Dataset(x_tr, y_tr, x_te, y_te, len(train.classes))

    load.__doc__ = f"torchvision ``{class_name}`` from ``data.root`` (downloaded only with data.download)."
    return load


DATASETS: dict[str, Callable[[DataConfig, int], Dataset]] = {
    "digits": load_digits_dataset,
    "synthetic": load_synthetic_dataset,
    "mnist": _torchvision_loader("MNIST"),
    "fashion-mnist": _torchvision_loader("FashionMNIST"),
    "cifar10": _torchvision_loader("CIFAR10"),
}
