"""Parts: registries, import paths, per-part settings, strategy specs, and a lab's own parts in a comparison."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tomllib

from fedunlearn.cli import main
from fedunlearn.config import config_to_dict, load_config, to_toml
from fedunlearn.parts import check_parts, load_experiment
from fedunlearn.results import RunDir, read_csv
from fedunlearn.settings import ConfigError
from fedunlearn.strategies import STRATEGIES, strategy_spec
from fedunlearn.strategies.ieu import IEU
from fedunlearn.strategies.puf import PUF
from tests.parts.lab import Shrink

ROOT = Path(__file__).resolve().parents[1]
LAB = ["data.name='tests.parts.lab:blobs'", "data.num_clients=4", "data.partition=iid", "data.backdoor.clients=[]",
       "probe.metric=forget_acc",
       "model.name='tests.parts.lab:tiny_mlp'", "model.'tests.parts.lab:tiny_mlp'.width=5"]


def test_config_imports_no_registry():
    code = "import fedunlearn.config, sys; assert 'fedunlearn.strategies' not in sys.modules, sorted(sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_each_part_validates_its_own_table():
    with pytest.raises(ConfigError, match=r"^forgetting.puf.eta: must be > 0"):
        check_parts(load_config(ROOT / "experiments/default.toml", ["forgetting.puf.eta=0"]))
    with pytest.raises(ConfigError, match=r"^forgetting.pga.lr: must be > 0"):  # a table of an unlisted strategy too
        check_parts(load_config(ROOT / "experiments/default.toml", ["forgetting.pga.lr=-1", "forgetting.strategies=['puf']"]))
    with pytest.raises(ConfigError, match=r"^forgetting.pufff: no strategy or wrapper is called 'pufff'"):
        check_parts(load_config(ROOT / "experiments/default.toml", ["forgetting.pufff.eta=3"]))
    with pytest.raises(ConfigError, match=r"^data.dirichlet.alpha: must be > 0"):
        load_experiment(ROOT / "experiments/default.toml", ["data.dirichlet.alpha=0"])
    with pytest.raises(ConfigError, match=r"^model.cnn.hidden: expected int"):
        load_experiment(ROOT / "experiments/default.toml", ["model.cnn.hidden='wide'"])
    with pytest.raises(ConfigError, match=r"^model.cnn.depth: unknown key"):
        load_experiment(ROOT / "experiments/default.toml", ["model.cnn.depth=3"])


def test_a_variant_overrides_only_its_own_entry():
    cfg = load_config(ROOT / "experiments/default.toml", ["forgetting.puf.eta=10"])
    plain, variant = strategy_spec("puf", cfg.forgetting), strategy_spec("puf@eta=40,mode=special", cfg.forgetting)
    assert (plain.settings[0].eta, plain.settings[0].mode) == (10.0, "regular")
    assert (variant.settings[0].eta, variant.settings[0].mode) == (40.0, "special")
    wrapped = strategy_spec("puf-ieu@eta=40,decay=0.2,ieu.noise=0", cfg.forgetting)
    unlearner = wrapped.build()
    assert isinstance(unlearner, IEU) and isinstance(unlearner.inner, PUF)
    assert (unlearner.inner.settings.eta, unlearner.settings.decay, unlearner.settings.noise) == (40.0, 0.2, 0.0)
    assert wrapped.describe_step(unlearner) == ("forgetting.puf.eta = 40.0, forgetting.ieu.decay = 0.2, "
                                                "forgetting.ieu.noise = 0.0")
    with pytest.raises(ConfigError, match=r"'etaa' in 'puf@etaa=3' is not a setting of puf; .*'puf.eta'"):
        strategy_spec("puf@etaa=3", cfg.forgetting)
    with pytest.raises(ConfigError, match=r"^forgetting.puf.eta: must be > 0"):
        strategy_spec("puf@eta=-3", cfg.forgetting)


def test_a_labelled_entry_names_its_rows_and_keeps_its_full_spec():
    entries = ('forgetting.strategies=["retrain", { strategy = "puf+ieu", label = "puf-ieu-40", eta = 40, '
               'ieu = { decay = 0.2 } }, { strategy = "puf@mode=special", label = "special", eta = 2 }]')
    cfg = load_config(ROOT / "experiments/default.toml", [entries])
    specs = {s.label: s for s in check_parts(cfg)}
    assert list(specs) == ["retrain", "puf-ieu-40", "special"]
    assert specs["puf-ieu-40"].spec == "puf+ieu@eta=40,ieu.decay=0.2"
    assert specs["special"].spec == 'puf@mode="special",eta=2'
    ieu = specs["puf-ieu-40"].build()
    assert (ieu.inner.settings.eta, ieu.settings.decay) == (40.0, 0.2)
    assert load_config(None, [entries]).forgetting.strategies == cfg.forgetting.strategies
    assert tomllib.loads(to_toml(config_to_dict(cfg)))["forgetting"]["strategies"] == cfg.forgetting.strategies
    with pytest.raises(ConfigError, match="the label 'x' names both"):
        check_parts(load_config(None, ['forgetting.strategies=[{ strategy = "puf", label = "x" }, '
                                       '{ strategy = "natural", label = "x" }]']))
    with pytest.raises(ConfigError, match="cannot name a strategy's rows and folder"):
        check_parts(load_config(None, ['forgetting.strategies=[{ strategy = "puf", label = "a/b" }]']))
    with pytest.raises(ConfigError, match="forgetting.strategies: .* neither a spec"):
        load_config(None, ['forgetting.strategies=[{ label = "x" }]'])


def test_the_reference_is_found_by_its_from_scratch_flag():
    specs = check_parts(load_config(ROOT / "experiments/default.toml", ["forgetting.strategies=['puf', 'natural']"]))
    assert [s.label for s in specs] == ["retrain", "puf", "natural"] and specs[0].from_scratch
    with pytest.raises(ConfigError, match="federaser needs the pseudo-gradient history; set store.history = true"):
        check_parts(load_config(ROOT / "experiments/default.toml",
                                ["store.history=false", "forgetting.strategies=['federaser']"]))


def test_import_paths_resolve_and_fail_clearly():
    cfg = load_experiment(None, LAB)
    assert cfg.model.settings["tests.parts.lab:tiny_mlp"] == {"width": 5}
    assert cfg.data.settings["tests.parts.lab:blobs"] == {"samples": 600, "classes": 3}  # resolved, defaults written
    with pytest.raises(ConfigError, match=r"^model.name: cannot import module 'mylab.nets'"):
        load_experiment(None, [*LAB, "model.name='mylab.nets:resnet18'"])
    with pytest.raises(ConfigError, match=r"^data.name: module 'tests.parts.lab' has no attribute 'nope'"):
        load_experiment(None, [*LAB, "data.name='tests.parts.lab:nope'"])
    with pytest.raises(ConfigError, match=r"^model.tests.parts.lab:tiny_mlp.width: must be >= 1"):
        load_experiment(None, [*LAB, "model.'tests.parts.lab:tiny_mlp'.width=0"])
    with pytest.raises(ConfigError, match=r"'tests.parts.lab:blobs' is not a Unlearner subclass"):
        check_parts(load_config(None, [*LAB, "forgetting.strategies=['tests.parts.lab:blobs']"]))


def test_an_import_path_that_names_the_wrong_kind_of_object_fails_in_one_line():
    with pytest.raises(ConfigError, match=r"^model.name: ':tiny_mlp' is not an import path; write 'module:attr'"):
        load_experiment(None, [*LAB, "model.name=':tiny_mlp'"])  # importlib's bare ValueError before
    with pytest.raises(ConfigError, match=r"^model.name: 'tests.parts.lab:' is not an import path"):
        load_experiment(None, [*LAB, "model.name='tests.parts.lab:'"])
    with pytest.raises(ConfigError, match=r"^model.name: 'tests.parts.lab:blobs' cannot be called as a model "
                                          r"\(input_shape, num_classes, settings\)"):
        load_experiment(None, [*LAB, "model.name='tests.parts.lab:blobs'"])  # a TypeError traceback before
    with pytest.raises(ConfigError, match=r"^data.name: 'tests.parts.lab:tiny_mlp' cannot be called as a data set "
                                          r"\(settings, seed\)"):
        load_experiment(None, [*LAB, "data.name='tests.parts.lab:tiny_mlp'"])
    with pytest.raises(ConfigError, match=r"^model.name: 'tests.parts.lab:not_a_model' returned str, not a torch"):
        load_experiment(None, [*LAB, "model.name='tests.parts.lab:not_a_model'"])  # passed the checks before
    with pytest.raises(ConfigError, match=r"^data.name: 'tests.parts.lab:blobs_as_arrays' returned tuple, not a "):
        load_experiment(None, [*LAB, "data.name='tests.parts.lab:blobs_as_arrays'"])  # an AttributeError before
    with pytest.raises(ConfigError, match=r"^data.name: 'tests.parts.lab:blobs_labelled_beyond' returned train "
                                          r"labels in 3..5 with num_classes = 3"):
        load_experiment(None, [*LAB, "data.name='tests.parts.lab:blobs_labelled_beyond'"])  # accepted before


def test_a_label_taken_by_the_added_reference_is_refused():
    with pytest.raises(ConfigError, match=r"the label 'retrain' names both 'puf' and 'retrain' \(the reference"):
        check_parts(load_config(None, ['forgetting.strategies=[{ strategy = "puf", label = "retrain" }]']))
    with pytest.raises(ConfigError, match=r"^forgetting.strategies: 'eta' in 'puf@eta' is not key=value"):
        check_parts(load_config(None, ["forgetting.strategies=['puf@eta']"]))  # it named --set before


def test_a_module_in_the_working_directory_is_found_as_the_console_script_runs(tmp_path, monkeypatch):
    from fedunlearn.registry import import_path

    (tmp_path / "beside_the_experiment.py").write_text("WIDTH = 7\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    assert import_path("beside_the_experiment:WIDTH", "model.name") == 7


@pytest.mark.slow
def test_a_labs_own_strategy_model_and_data_set_run_in_a_comparison(tmp_path, capsys):
    STRATEGIES.register("shrink", Shrink)  # the one line that adds a strategy
    out = tmp_path / "lab"
    overrides = [*LAB, "train.rounds=3", "train.batch_size=16", "forget=[{clients=[1]}]", "probe.max_rounds=2",
                 "forgetting.min_original_test_acc=0", "forgetting.check_separation=false", "forgetting.recovery_rounds=2",
                 "forgetting.strategies=['retrain', 'shrink', 'tests.parts.lab:Shrink@factor=0.9']"]
    argv = ["run", str(ROOT / "experiments/default.toml"), "--out", str(out)]
    assert main([*argv, *[a for o in overrides for a in ("--set", o)]]) == 0
    rows = {r["strategy"]: r for r in read_csv(out / "summary.csv")}
    assert list(rows) == ["original", "retrain", "shrink", "tests.parts.lab:Shrink@factor=0.9"]
    assert rows["shrink"]["notes"] == "shrink: factor 0.5"
    assert rows["tests.parts.lab:Shrink@factor=0.9"]["notes"] == "shrink: factor 0.9"
    weights, _ = RunDir(out / "seed-0" / "strategies" / "shrink").load_checkpoint()
    assert [w.shape for w in weights] == [(5, 5), (5,), (3, 5), (3,)]  # tiny_mlp, width 5, on 5-d blobs
    train = read_csv(out / "seed-0" / "train" / "rounds.csv")
    assert float(train[-1]["test_acc"]) > 0.6 and np.isfinite(float(rows["shrink"]["gap_test_acc"]))
    assert "[forgetting.shrink]\nfactor = 0.5" in (out / "config.toml").read_text()
