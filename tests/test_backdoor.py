"""Backdoor poisoning: the trigger is present and labels change only on the poisoned fraction."""

from __future__ import annotations

import numpy as np

from fedunlearn.config import BackdoorConfig, DataConfig
from fedunlearn.data import build_federated_data
from fedunlearn.data.backdoor import add_trigger, attack_set, poison


def test_poison_changes_only_the_chosen_fraction():
    rng = np.random.default_rng(0)
    x = rng.random((200, 1, 8, 8)).astype(np.float32) * 0.5
    y = np.arange(200) % 10
    cfg = BackdoorConfig(target_label=3, fraction=0.4, patch_size=2, patch_value=1.0)
    xp, yp, idx = poison(x, y, cfg, np.random.default_rng(1))
    assert len(idx) == round(0.4 * np.sum(y != 3))
    assert np.all(y[idx] != 3) and np.all(yp[idx] == 3)
    untouched = np.setdiff1d(np.arange(200), idx)
    np.testing.assert_array_equal(yp[untouched], y[untouched])
    np.testing.assert_array_equal(xp[untouched], x[untouched])
    assert np.all(xp[idx][:, :, -2:, -2:] == 1.0)
    np.testing.assert_array_equal(xp[idx][:, :, :-2, :], x[idx][:, :, :-2, :])


def test_attack_set_has_triggered_non_target_images():
    x = np.zeros((20, 1, 8, 8), np.float32)
    y = np.arange(20) % 4
    xa, ya = attack_set(x, y, BackdoorConfig(target_label=1, patch_size=3))
    assert len(ya) == 15 and np.all(ya == 1)
    assert np.all(xa[:, :, -3:, -3:] == 1.0) and np.all(xa[:, :, :-3, :] == 0.0)


def test_tabular_trigger_uses_last_features():
    x = np.zeros((2, 6), np.float32)
    out = add_trigger(x, BackdoorConfig(patch_size=2, patch_value=4.0))
    assert out[:, -2:].tolist() == [[4.0, 4.0]] * 2 and np.all(out[:, :-2] == 0)


def test_only_backdoor_clients_are_poisoned_in_a_federation():
    cfg = DataConfig(num_clients=5, backdoor=BackdoorConfig(clients=[2], fraction=0.5))
    fd = build_federated_data(cfg, seed=0)
    assert [len(c.poisoned) > 0 for c in fd.clients] == [False, False, True, False, False]
    assert fd.x_attack is not None and np.all(fd.y_attack == 0)


def test_patch_size_zero_relabels_without_a_trigger():
    rng = np.random.default_rng(0)
    x = rng.random((50, 1, 8, 8)).astype(np.float32)
    y = np.arange(50) % 5
    xp, yp, idx = poison(x, y, BackdoorConfig(target_label=1, fraction=1.0, patch_size=0), np.random.default_rng(1))
    np.testing.assert_array_equal(xp, x)  # images untouched
    assert np.all(yp[idx] == 1) and len(idx) == np.sum(y != 1)
    fd = build_federated_data(DataConfig(num_clients=4, backdoor=BackdoorConfig(clients=[1], patch_size=0)), seed=0)
    assert fd.x_attack is None and len(fd.clients[1].poisoned) > 0
