"""Config loading, overrides and the CLI's one-line errors (exit 2, nothing written)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedunlearn.cli import main
from fedunlearn.config import ConfigError, config_to_dict, load_config, to_toml
from fedunlearn.parts import load_experiment

ROOT = Path(__file__).resolve().parents[1]


def test_default_experiment_loads_and_overrides_apply():
    cfg = load_config(ROOT / "experiments/default.toml", ["seed=3", "train.rounds=5", "data.name=synthetic",
                                                         "data.backdoor.clients=[1, 2]", "train.lr=1"])
    assert cfg.seed == 3 and cfg.train.rounds == 5 and cfg.data.name == "synthetic"
    assert cfg.data.backdoor.clients == [1, 2]
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == 1.0


def test_resolved_config_round_trips_through_toml(tmp_path):
    cfg = load_config(ROOT / "experiments/default.toml", ["data.backdoor.clients=[0]", "forget=[{clients=[1], round=3}, {clients=[2]}]"])
    path = tmp_path / "c.toml"
    path.write_text(to_toml(config_to_dict(cfg)))
    assert load_config(path) == cfg


@pytest.mark.parametrize("override, field", [
    ("train.lrr=0.1", "train.lrr: unknown key"),
    ("train.lr=-1", "train.lr: must be a finite number > 0"),
    ("train.rounds=ten", "train.rounds: expected int"),
    ("data.name=imagenet", "data.name: unknown data set"),
    ("data.partition=byzantine", "data.partition: unknown partitioner"),
    ("data.backdoor.clients=[12]", "data.backdoor.clients: client id 12"),
    ("model=3", "model: expected a table"),
    ("store.dtype=float64", "store.dtype"),
])
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace("[", r"\[")):
        load_experiment(ROOT / "experiments/default.toml", [override])


def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", str(ROOT / "experiments/default.toml"), "--set", "train.lr=0", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "train.lr" in err[0] and "must be a finite number > 0" in err[0]
    assert not out.exists()


def test_cli_malformed_toml_and_missing_file(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nrounds = 3\n")
    assert main(["train", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "nope.toml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_cli_missing_data_root_exits_2(tmp_path, capsys):
    code = main(["train", str(ROOT / "experiments/default.toml"), "--set", "data.name=mnist",
                 "--set", f"data.mnist.root={tmp_path / 'missing'}", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "data.mnist.root: folder" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
