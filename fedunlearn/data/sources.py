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

from fedunlearn.settings import ConfigError, require


@dataclass
class Dataset:
    """A labelled train/test split held in memory."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    groups: np.ndarray | None = None  # per train sample: 0, or a group a partitioner may place (partition.grouped_partition)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def load_digits_dataset(settings, seed: int) -> Dataset:
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


@dataclass
class SyntheticSettings:
    """``[data.synthetic]``: how many samples, features and classes, and the share of labels drawn at random.

    ``label_noise`` is scikit-learn's ``flip_y``: that share of samples get a random label, which a
    model can only memorise (a gap between members and non-members for membership inference).
    """

    samples: int = 2000
    features: int = 20
    classes: int = 4
    label_noise: float = 0.01
    test_samples: int = 0  # 0: a fifth of ``samples``; else a test set of this size beside ``samples`` train samples

    def validate(self) -> None:
        require(0 <= self.label_noise < 1, "label_noise", f"must be in [0, 1) (got {self.label_noise})")
        require(self.classes >= 2, "classes", f"must be >= 2 (got {self.classes})")
        require(self.features >= 2, "features", f"must be >= 2 (got {self.features})")
        require(self.samples >= 10 * self.classes, "samples", f"must be >= 10 x classes (got {self.samples})")
        require(self.test_samples >= 0, "test_samples", f"must be >= 0 (got {self.test_samples}); 0 means a fifth "
                "of samples")


def load_synthetic_dataset(settings: SyntheticSettings, seed: int) -> Dataset:
    """Seeded Gaussian-cluster classification (scikit-learn ``make_classification``).

    Split 80/20, or, with ``test_samples``, ``samples`` train samples and ``test_samples`` test
    samples (a test set that stays the same size as a federation grows).
    """
    from sklearn.datasets import make_classification

    n_informative = max(2, min(settings.features, settings.classes * 2))
    n_test = settings.test_samples or settings.samples // 5
    x, y = make_classification(
        n_samples=settings.samples + settings.test_samples,
        n_features=settings.features,
        n_informative=n_informative,
        n_redundant=0,
        n_classes=settings.classes,
        n_clusters_per_class=1,
        class_sep=1.5,
        flip_y=settings.label_noise,
        random_state=seed,
    )
    return Dataset(
        x[n_test:].astype(np.float32), y[n_test:].astype(np.int64),
        x[:n_test].astype(np.float32), y[:n_test].astype(np.int64),
        settings.classes,
    )


load_synthetic_dataset.Settings = SyntheticSettings


@dataclass
class DependentSettings:
    """``[data.dependent]``: the "ascent fails to forget" construction (docs/methods.md, "Ascent fails").

    ``samples`` train samples, of which a share ``forget_fraction`` is the forget data (group 1),
    shifted by ``shift`` along the class-separation direction; ``test_samples`` test samples from
    the retain distribution.
    """

    samples: int = 2000
    features: int = 20
    forget_fraction: float = 0.1
    shift: float = 1.0
    test_samples: int = 1000

    def validate(self) -> None:
        require(self.features >= 1, "features", f"must be >= 1 (got {self.features})")
        require(0 < self.forget_fraction < 1, "forget_fraction", f"must be in (0, 1) (got {self.forget_fraction})")
        n_forget = round(self.forget_fraction * self.samples)
        require(self.samples >= 20 and 1 <= n_forget < self.samples, "samples",
                f"must be >= 20 and leave forget and retain samples (got {self.samples} with forget_fraction "
                f"{self.forget_fraction})")
        require(np.isfinite(self.shift), "shift", f"must be a finite number (got {self.shift})")
        require(self.test_samples >= 1, "test_samples", f"must be >= 1 (got {self.test_samples})")


def load_dependent_dataset(settings: DependentSettings, seed: int) -> Dataset:
    """Two Gaussian classes whose forget data depends on the retain data (Mavrothalassitis et al.).

    Labels y are drawn uniformly from {0, 1}, class means are μ_0 = −e₁ and μ_1 = +e₁, and
    v = e₁ is the direction of the class separation. Retain (and test) samples: x ~ N(μ_y, I);
    forget samples (``round(forget_fraction · samples)`` of them, ``groups`` 1): x ~ N(μ_y + a·v, I)
    with a = ``shift``. The train samples are in random order; everything is seeded by ``seed``.
    """
    rng = np.random.default_rng([seed, 0xDE9])
    d, n = settings.features, settings.samples
    n_forget = round(settings.forget_fraction * n)
    v = np.zeros(d)
    v[0] = 1.0

    def draw(count: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 2, count)
        x = (2.0 * y - 1.0)[:, None] * v + shift * v + rng.standard_normal((count, d))
        return x.astype(np.float32), y.astype(np.int64)

    x_retain, y_retain = draw(n - n_forget, 0.0)
    x_forget, y_forget = draw(n_forget, settings.shift)
    x_test, y_test = draw(settings.test_samples, 0.0)
    groups = np.concatenate([np.zeros(n - n_forget, np.int64), np.ones(n_forget, np.int64)])
    order = rng.permutation(n)
    x = np.concatenate([x_retain, x_forget])[order]
    y = np.concatenate([y_retain, y_forget])[order]
    return Dataset(x, y, x_test, y_test, 2, groups=groups[order])


load_dependent_dataset.Settings = DependentSettings


@dataclass
class LocalRootSettings:
    """``[data.NAME]`` of a data set read from disk: its folder, and whether it may be downloaded."""

    root: str = ""
    download: bool = False

    def validate(self) -> None:
        require(bool(self.root), "root", 'this data set needs a local folder; set root = "/path/to/data"')
        require(Path(self.root).expanduser().is_dir() or self.download, "root",
                f"folder {self.root!r} does not exist; create it or set download = true")


def _as_images(data) -> np.ndarray:
    """uint8 (N, H, W) -> float32 (N, 1, H, W) in [0, 1]."""
    return (np.asarray(data, dtype=np.float32) / 255.0)[:, None, :, :]


def _torchvision_loader(class_name: str, name: str) -> Callable[[LocalRootSettings, int], Dataset]:
    def load(settings: LocalRootSettings, seed: int) -> Dataset:
        import torchvision.datasets as tvd

        root = Path(settings.root).expanduser()
        cls = getattr(tvd, class_name)
        try:
            train = cls(str(root), train=True, download=settings.download)
            test = cls(str(root), train=False, download=settings.download)
        except RuntimeError as err:  # torchvision's "Dataset not found or corrupted"
            raise ConfigError(
                f"data.{name}.root: {class_name} files not found under {str(root)!r} ({err}); "
                "put the data set there or set download = true"
            ) from None
        x_tr, x_te = _as_images(train.data), _as_images(test.data)
        y_tr = np.asarray(train.targets, dtype=np.int64)
        y_te = np.asarray(test.targets, dtype=np.int64)
        return Dataset(x_tr, y_tr, x_te, y_te, len(train.classes))

    load.__doc__ = f"torchvision ``{class_name}`` from ``root`` (downloaded only with ``download = true``)."
    load.Settings = LocalRootSettings
    return load


def load_cifar10_dataset(settings: LocalRootSettings, seed: int) -> Dataset:
    """CIFAR-10 from ``root``/cifar-10-batches-py, read from its pickle batches directly.

    torchvision's ``CIFAR10`` insists on the md5 of every batch file, which rules out the tiny
    files tests write; the batch format itself (a pickled dict with ``data`` as N x 3072 uint8
    rows and ``labels``) is read here, and torchvision is used only to download when asked.
    """
    import pickle

    root = Path(settings.root).expanduser()
    folder = root / "cifar-10-batches-py"
    if settings.download and not folder.is_dir():
        import torchvision.datasets as tvd

        tvd.CIFAR10(str(root), train=True, download=True)

    def read(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for name in names:
            path = folder / name
            if not path.is_file():
                raise ConfigError(f"data.cifar10.root: CIFAR-10 file {str(path)!r} not found; "
                                  "put the python version of CIFAR-10 there or set download = true")
            with open(path, "rb") as fh:
                batch = pickle.load(fh, encoding="bytes")
            xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(batch[b"labels"], dtype=np.int64))
        return np.concatenate(xs).astype(np.float32) / 255.0, np.concatenate(ys)

    x_tr, y_tr = read([f"data_batch_{i}" for i in range(1, 6)])
    x_te, y_te = read(["test_batch"])
    return Dataset(x_tr, y_tr, x_te, y_te, 10)


load_cifar10_dataset.Settings = LocalRootSettings
