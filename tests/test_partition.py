"""Partitioners: disjoint, complete, seeded; alpha and shards behave as documented."""

from __future__ import annotations

import numpy as np
import pytest

from fedunlearn.data import PARTITIONERS
from fedunlearn.settings import ConfigError, build_settings

LABELS = np.repeat(np.arange(10), 100)


def split(name, seed=0, **kw):
    part = PARTITIONERS.get(name)
    return part.obj(LABELS, 10, build_settings(part.settings, kw, f"data.{name}."), np.random.default_rng(seed))


@pytest.mark.parametrize("name", PARTITIONERS.names())
def test_disjoint_complete_and_seeded(name):
    parts = split(name)
    assert len(parts) == 10
    allidx = np.concatenate(parts)
    assert len(allidx) == len(LABELS) and len(np.unique(allidx)) == len(LABELS)  # disjoint and complete
    again = split(name)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = split(name, seed=1)
    assert any(not np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def label_skew(parts) -> float:
    """Mean over clients of the largest class share: 0.1 for IID labels here, 1.0 for one class each."""
    return float(np.mean([np.bincount(LABELS[p], minlength=10).max() / len(p) for p in parts]))


def test_smaller_alpha_gives_more_label_skew():
    skews = [np.mean([label_skew(split("dirichlet", seed=s, alpha=a)) for s in range(5)]) for a in (0.1, 1.0, 100.0)]
    assert skews[0] > skews[1] > skews[2]
    assert skews[2] < 0.2  # large alpha is close to IID


def test_dirichlet_respects_min_partition_size_or_says_why():
    assert min(len(p) for p in split("dirichlet", alpha=0.3, min_partition_size=20)) >= 20
    with pytest.raises(ConfigError, match="data.dirichlet.alpha"):
        split("dirichlet", alpha=0.01, min_partition_size=95)


def test_shards_give_each_client_few_classes():
    # Shards aligned with class boundaries hold one class each; otherwise a shard may straddle two.
    assert all(len(np.unique(LABELS[p])) == 1 for p in split("shards", classes_per_client=1))
    assert all(len(np.unique(LABELS[p])) <= 2 for p in split("shards", classes_per_client=2))
    assert all(len(np.unique(LABELS[p])) <= 6 for p in split("shards", classes_per_client=3))
