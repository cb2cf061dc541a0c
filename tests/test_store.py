"""PseudoGradientStore: latest always, history spilling to disk past its RAM budget."""

from __future__ import annotations

import numpy as np
import pytest

from fedunlearn.store import PseudoGradientStore


def delta(pid: int, rnd: int) -> list[np.ndarray]:
    rng = np.random.default_rng([pid, rnd])
    return [rng.normal(size=(64, 32)).astype(np.float32), rng.normal(size=(32,)).astype(np.float32)]


def test_history_past_ram_budget_reads_back_exactly(tmp_path):
    entry_bytes = sum(a.nbytes for a in delta(0, 0))
    store = PseudoGradientStore(tmp_path, keep_history=True, ram_budget_bytes=3 * entry_bytes)
    for rnd in range(1, 6):
        for pid in range(4):
            store.record(pid, rnd, 10 * pid + rnd, delta(pid, rnd))
    assert store.cached_bytes <= 3 * entry_bytes  # 20 entries written, at most 3 in RAM
    assert len(list((tmp_path / "history").glob("*.npz"))) == 20
    for pid in range(4):
        assert store.history_rounds(pid) == [1, 2, 3, 4, 5]
        for rnd in range(1, 6):
            entry = store.get(pid, rnd)
            assert entry.num_examples == 10 * pid + rnd
            for got, want in zip(entry.delta, delta(pid, rnd), strict=True):
                np.testing.assert_array_equal(got, want)
    assert store.cached_bytes <= 3 * entry_bytes


def test_latest_is_kept_without_history(tmp_path):
    store = PseudoGradientStore(tmp_path)
    store.record(1, 1, 5, delta(1, 1))
    store.record(1, 2, 6, delta(1, 2))
    assert store.latest(1).server_round == 2 and store.latest(1).num_examples == 6
    np.testing.assert_array_equal(store.latest(1).delta[0], delta(1, 2)[0])
    assert store.history_rounds(1) == [] and not (tmp_path / "history").exists()
    with pytest.raises(KeyError):
        store.get(1, 1)
    with pytest.raises(KeyError, match="client 7"):
        store.latest(7)


def test_float16_history_is_half_the_size_and_close(tmp_path):
    store = PseudoGradientStore(tmp_path, keep_history=True, ram_budget_bytes=0, dtype="float16")
    store.record(0, 1, 3, delta(0, 1))
    got = store.get(0, 1).delta
    assert got[0].dtype == np.float16
    np.testing.assert_allclose(got[0], delta(0, 1)[0], rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(store.latest(0).delta[0], delta(0, 1)[0])  # latest stays float32


def test_save_and_load_round_trip(tmp_path):
    store = PseudoGradientStore(tmp_path, keep_history=True)
    for rnd in (1, 2):
        for pid in (0, 3):
            store.record(pid, rnd, pid + 1, delta(pid, rnd))
    store.save()
    back = PseudoGradientStore.load(tmp_path)
    assert back.clients() == [0, 3] and back.history_rounds(3) == [1, 2]
    np.testing.assert_array_equal(back.latest(3).delta[1], delta(3, 2)[1])
    np.testing.assert_array_equal(back.get(0, 1).delta[0], delta(0, 1)[0])
