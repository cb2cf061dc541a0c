"""The "ascent fails to forget" pieces: the dependent data, its grouped partition, logreg, the sweep plot."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedunlearn.config import DataConfig, ModelConfig
from fedunlearn.data import DATASETS, PARTITIONERS, build_federated_data, partition
from fedunlearn.models import build_model
from fedunlearn.report.plots import parse_spec, registry_step_keys, step_sweep, sweep_lines
from fedunlearn.settings import ConfigError, build, build_settings


def dependent(seed: int = 0, **table):
    part = DATASETS.get("dependent")
    return part.obj(build_settings(part.settings, table, "data.dependent."), seed)


def grouped_config(clients=(0,), **dependent_table) -> DataConfig:
    return build(DataConfig, {"name": "dependent", "num_clients": 10, "partition": "grouped",
                              "dependent": dependent_table, "grouped": {"clients": list(clients)}}, "data.")


def test_forget_samples_are_ten_percent_and_shifted_by_a_v():
    ds = dependent()
    assert ds.x_train.shape == (2000, 20) and ds.x_test.shape == (1000, 20) and ds.num_classes == 2
    assert ds.groups.shape == (2000,) and int(ds.groups.sum()) == 200  # 10% forget samples, group 1
    # the same draws with another shift: the forget samples move by exactly (a' - a)·v, v = e1, nothing else does
    moved = dependent(shift=3.0)
    v = np.eye(20, dtype=np.float32)[0]
    np.testing.assert_allclose(moved.x_train - ds.x_train, 2.0 * ds.groups[:, None] * v, atol=1e-5)
    np.testing.assert_array_equal(moved.y_train, ds.y_train)
    # around the class means ±e1, retain samples are centred on 0 and forget samples on a·v (a = 1)
    centred = ds.x_train - (2.0 * ds.y_train - 1.0)[:, None] * v
    forget, retain = centred[ds.groups == 1].mean(0), centred[ds.groups == 0].mean(0)
    assert abs(forget[0] - 1.0) < 0.25 and np.abs(forget[1:]).max() < 0.3
    assert np.abs(retain).max() < 0.12
    test_centred = ds.x_test - (2.0 * ds.y_test - 1.0)[:, None] * v
    assert np.abs(test_centred.mean(0)).max() < 0.15  # the test set follows the retain distribution


def test_dependent_data_is_seeded_and_validated():
    a, b, c = dependent(0), dependent(0), dependent(1)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.groups, b.groups)
    assert not np.array_equal(a.x_train, c.x_train)
    with pytest.raises(ConfigError, match="data.dependent.forget_fraction"):
        dependent(forget_fraction=1.5)
    with pytest.raises(ConfigError, match="data.dependent.samples"):
        dependent(samples=10)


def test_forget_samples_sit_on_the_chosen_client_and_the_rest_is_iid():
    cfg = grouped_config(clients=[3])
    ds, parts = partition(cfg, 0)
    np.testing.assert_array_equal(parts[3], np.flatnonzero(ds.groups == 1))
    others = [p for i, p in enumerate(parts) if i != 3]
    assert all(len(p) == 200 and not ds.groups[p].any() for p in others)  # 1,800 retain samples, 9 clients
    assert len(np.unique(np.concatenate(parts))) == 2000
    fd = build_federated_data(cfg, 0)
    np.testing.assert_array_equal(fd.clients[3].x_train, ds.x_train[ds.groups == 1])
    _, again = partition(cfg, 0)
    assert all(np.array_equal(p, q) for p, q in zip(parts, again, strict=True))


def test_grouped_partition_refuses_what_it_cannot_place():
    with pytest.raises(ConfigError, match="data.partition"):  # digits have no sample groups
        partition(build(DataConfig, {"name": "digits", "partition": "grouped"}, "data."), 0)
    with pytest.raises(ConfigError, match="data.grouped.clients"):
        partition(grouped_config(clients=[12]), 0)
    part = PARTITIONERS.get("grouped")
    with pytest.raises(ConfigError, match="data.grouped.clients"):
        build_settings(part.settings, {"clients": [1, 1]}, "data.grouped.")


def test_logreg_is_one_linear_layer():
    model = build_model(ModelConfig(name="logreg"), (20,), 2, seed=0)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 1 and linears[0].weight.shape == (2, 20) and linears[0].bias.shape == (2,)
    assert [tuple(t.shape) for t in model.state_dict().values()] == [(2, 20), (2,)]
    assert model(torch.zeros(5, 20)).shape == (5, 2)
    assert build_model(ModelConfig(name="logreg"), (1, 8, 8), 10, seed=0)(torch.zeros(3, 1, 8, 8)).shape == (3, 10)


def summary(spec: str, seed: int, dist: float, strategy: str | None = None) -> dict:
    return {"strategy": strategy or spec, "spec": spec, "seed": str(seed), "weight_dist_to_retrain": str(dist)}


ROWS = [
    summary("", 0, 0.09, "original"), summary("", 1, 0.11, "original"),
    summary("retrain", 0, 0.0), summary("natural", 0, 0.01), summary("pga", 0, 0.3),
    summary("pga@lr=0.1", 0, 0.25), summary("pga@lr=0.01", 0, 0.03), summary("pga@lr=0.01", 1, 0.05),
    summary("pga@lr=1.0", 1, 0.6),
    summary("puf@eta=20", 0, 0.4),  # one value: no sweep
    summary("puf@mode=\"special\",eta=2", 0, 0.2), summary("puf@mode=\"special\",eta=5", 0, 0.5),
    summary("pga@distance_threshold=1000000000.0,lr=0.01", 0, 0.03, "pga-free@lr=0.01"),
    summary("pga@distance_threshold=1000000000.0,lr=0.1", 0, 0.27, "pga-free@lr=0.1"),
    summary("pga@epochs=1", 0, 0.05), summary("pga@epochs=100", 0, 0.57),
    summary("pga@epochs=300", 0, ""),  # no distance: left out
]


def test_sweep_lines_group_entries_that_differ_in_one_numeric_setting():
    assert parse_spec('puf@mode="special",eta=2') == ("puf", {"mode": '"special"', "eta": "2"})
    lines = {(line.strategy, line.key, line.fixed): line
             for line in sweep_lines(ROWS, step_keys=lambda name: {"pga": {"lr"}, "puf": {"eta"}}[name])}
    assert set(lines) == {("pga", "lr", ()), ("pga", "lr", (("distance_threshold", "1000000000.0"),)),
                          ("pga", "epochs", ()), ("puf", "eta", (("mode", '"special"'),))}
    lr = lines["pga", "lr", ()]
    assert lr.step and lr.name == "pga" and list(lr.points) == [0.01, 0.1, 1.0]  # x parsed from specs, sorted
    assert lr.points[0.01] == [("0", 0.03), ("1", 0.05)]  # every seed's value
    free = lines["pga", "lr", (("distance_threshold", "1000000000.0"),)]
    assert free.name == "pga-free" and free.label == "pga-free (lr; distance_threshold=1e+09)"
    epochs = lines["pga", "epochs", ()]
    assert not epochs.step and list(epochs.points) == [1.0, 100.0]
    assert lines["puf", "eta", (("mode", '"special"'),)].points == {2.0: [("0", 0.2)], 5.0: [("0", 0.5)]}


def test_step_keys_come_from_the_strategies_and_the_figure_is_drawn(tmp_path):
    assert {"lr", "pga.lr"} <= registry_step_keys("pga")
    assert {"eta", "decay", "ieu.decay"} <= registry_step_keys("puf-ieu")
    assert registry_step_keys("nowhere.module:Thing") == set()
    path = step_sweep(tmp_path, ROWS)
    assert path is not None and path.name == "step_sweep.png" and path.stat().st_size > 10_000
    assert step_sweep(tmp_path, ROWS[:5]) is None  # no entries differing in a setting: no figure


def test_the_sweep_figure_legends_cover_no_data_or_labels(tmp_path, monkeypatch):
    from fedunlearn.report import plots

    rows = ROWS + [summary(f"pga@distance_threshold=1000000000.0,lr={x}", 0, d, "pga-" + "x" * 50 + f"@lr={x}")
                   for x, d in ((0.01, 0.04), (0.1, 0.3))]
    boxes, save = [], plots._save

    def check_then_save(fig, path):
        fig.tight_layout()
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            legend = ax.get_legend().get_window_extent(renderer)
            for other in fig.axes:
                for part in (other.get_window_extent(renderer), other.xaxis.label.get_window_extent(renderer),
                             other.yaxis.label.get_window_extent(renderer), other.title.get_window_extent(renderer)):
                    boxes.append(legend.overlaps(part))
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", check_then_save)
    assert plots.step_sweep(tmp_path, rows) is not None
    assert boxes and not any(boxes)
