"""The forgetting commands end to end, each a real Flower simulation started by the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedunlearn.cli import main
from fedunlearn.config import load_config
from fedunlearn.results import read_csv

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.num_clients=4", "data.partition=iid", "model.name=mlp", "model.mlp.hidden=32", "train.rounds=3", "train.local_epochs=1",
        "train.batch_size=16", "store.history=true", "forgetting.natural.rounds=1", "forgetting.recovery_rounds=2",
        "forgetting.min_original_test_acc=0", "forgetting.check_separation=false", "data.backdoor.clients=[]",
        "forget=[]", "probe.metric=auto"]


pytestmark = pytest.mark.slow


def sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("e2e") / "train"
    assert main(["train", str(ROOT / "experiments/default.toml"), *sets(TINY), "--out", str(out)]) == 0
    return out


def test_forget_with_a_step_that_makes_weights_nan_exits_2(trained, tmp_path, capsys):
    out = tmp_path / "nan"
    code = main(["forget", str(trained), "--client", "1", "--strategy", "puf", "--set", "forgetting.puf.eta=1e38",
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("fedunlearn: error: puf: round ")
    assert "left NaN or Inf in the weights at forgetting.puf.eta = 1e+38; lower the step size" in err
    assert (trained / "checkpoint" / "global.npz").exists()  # the trained run is untouched
    assert not (out / "summary.csv").exists()


def test_forget_puf_writes_summary_and_trajectory(trained, tmp_path, capsys):
    out = tmp_path / "puf"
    assert main(["forget", str(trained), "--client", "1", "--client", "2", "--strategy", "puf-ieu",
                 "--recovery-rounds", "2", "--out", str(out)]) == 0
    rows = read_csv(out / "summary.csv")
    assert [r["strategy"] for r in rows] == ["original", "puf-ieu"]
    puf = rows[1]
    assert puf["recovery_rounds"] == "2" and int(puf["rounds"]) == 3  # one unlearning round + two recovery
    # Unlearning round: 4 clients x 1 epoch; recovery: the 2 remaining clients x 1 epoch, twice.
    assert float(puf["client_epochs"]) == 4 + 2 * 2
    trajectory = read_csv(out / "strategies" / "puf-ieu" / "trajectory.csv")
    assert [t["phase"] for t in trajectory] == ["unlearn", "recover", "recover"]
    assert "client 1: fresh (round 4)" in puf["notes"] and "ieu" in puf["notes"]
    assert {r["forgotten"] for r in rows} == {"clients 1 2"}
    recorded = load_config(out / "config.toml")  # what the folder's results were computed with
    assert recorded.forget[0].clients == [1, 2] and recorded.forgetting.strategies == ["puf-ieu"]
    assert recorded.forgetting.recovery == "fixed" and recorded.forgetting.recovery_rounds == 2
    assert recorded.forgetting.settings["ieu"]["decay"] == 0.5  # defaults spelled out


def test_run_compares_every_strategy(tmp_path, capsys):
    out = tmp_path / "cmp"
    overrides = [*TINY, "forget=[{clients=[0]}]",
                 "forgetting.strategies=['retrain', 'natural', 'puf', 'puf-ieu', 'pga', 'federaser']"]
    assert main(["run", str(ROOT / "experiments/default.toml"), *sets(overrides), "--out", str(out)]) == 0
    rows = read_csv(out / "summary.csv")
    assert [r["strategy"] for r in rows] == ["original", "retrain", "natural", "puf", "puf-ieu", "pga", "federaser"]
    for column in ["strategy", "seed", "test_acc", "retain_acc", "forget_acc", "backdoor_asr", "recovery_rounds",
                   "client_epochs", "wall_s", "gap_test_acc"]:
        assert column in rows[0]
    by = {r["strategy"]: r for r in rows}
    assert float(by["retrain"]["gap_test_acc"]) == 0.0
    assert float(by["retrain"]["client_epochs"]) == 3 * 3  # 3 remaining clients x 3 rounds x 1 epoch
    assert by["original"]["client_epochs"] == ""  # empty where a metric does not apply
    assert json.loads((out / "summary.json").read_text())[0]["strategy"] == "original"
    # Resume: a second call reuses every finished strategy and writes the same table.
    assert main(["run", str(ROOT / "experiments/default.toml"), *sets(overrides), "--out", str(out), "--resume"]) == 0
    assert read_csv(out / "summary.csv") == rows
    # Resume with another eta: puf alone runs again (puf-ieu has its own eta, also from [forgetting.puf]).
    capsys.readouterr()
    changed = [*overrides, "forgetting.puf.eta=40"]
    assert main(["run", str(ROOT / "experiments/default.toml"), *sets(changed), "--out", str(out), "--resume"]) == 0
    log = capsys.readouterr().out
    assert "strategies/puf: computed with other settings (parts.puf.eta 20.0 -> 40.0)" in log
    reused = {n for n in ["retrain", "natural", "puf", "puf-ieu", "pga", "federaser"]
              if f"{n}: already done with these settings" in log}
    assert reused == {"retrain", "natural", "pga", "federaser"}
    recorded = json.loads((out / "seed-0" / "strategies" / "puf-ieu" / "settings.json").read_text())
    assert recorded["settings"]["parts"]["puf"]["eta"] == 40.0
    assert 'eta = 40.0' in (out / "config.toml").read_text()


def test_probe_command_gives_the_original_model_delay_zero(trained, capsys):
    assert main(["probe", str(trained), "--client", "1", "--max-rounds", "2"]) == 0
    out = capsys.readouterr().out
    assert "original: delay 0 rounds" in out
    curve = read_csv(trained / "probe" / "all.csv")
    assert [r["step"] for r in curve] == ["0", "1", "2"]
    assert float(curve[0]["value"]) >= float(curve[0]["threshold"])


def test_a_sequence_of_requests_unlearns_each_in_turn(tmp_path, capsys):
    out = tmp_path / "seq"
    overrides = [*TINY, "train.rounds=4", "forget=[{clients=[0], round=2}, {clients=[3]}]",
                 "forgetting.strategies=['retrain', 'puf']", "forgetting.recovery=fixed", "probe.enabled=false"]
    assert main(["run", str(ROOT / "experiments/default.toml"), *sets(overrides), "--out", str(out)]) == 0
    puf = read_csv(out / "seed-0" / "strategies" / "puf" / "trajectory.csv")
    # request 1 after round 2: unlearn + 2 recovery rounds; 2 regular rounds (to 4 in all); request 2.
    assert [t["phase"] for t in puf] == ["unlearn", "recover", "recover", "regular", "regular",
                                         "unlearn", "recover", "recover"]
    assert [int(t["round"]) for t in puf] == list(range(3, 11))
    retrain = read_csv(out / "seed-0" / "strategies" / "retrain" / "trajectory.csv")
    assert len(retrain) == 4  # from scratch over clients 1 and 2 only, train.rounds rounds
    rows = {r["strategy"]: r for r in read_csv(out / "summary.csv")}
    assert float(rows["retrain"]["client_epochs"]) == 4 * 2  # two remaining clients x 4 rounds x 1 epoch
    assert rows["puf"]["recovery_rounds"] == "4"
