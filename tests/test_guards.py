"""Every forgetting guard, through the CLI: exit code 2, one line naming the field, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedunlearn.cli import main
from fedunlearn.config import ConfigError, ForgetRequest, load_config

ROOT = Path(__file__).resolve().parents[1]


def cli(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return code, err[0]


def test_unknown_client_id(trained_run, capsys, tmp_path):
    code, err = cli(capsys, "forget", trained_run, "--client", 12, "--strategy", "puf", "--out", tmp_path / "o")
    assert code == 2 and "--client: unknown client id 12" in err and "0..9" in err
    assert not (tmp_path / "o").exists()


def test_a_forget_folder_holding_results_is_refused_without_offering_a_flag_forget_lacks(trained_run, capsys,
                                                                                          tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "summary.csv").write_text("strategy\noriginal\n")
    code, err = cli(capsys, "forget", trained_run, "--client", 1, "--strategy", "puf", "--out", tmp_path / "o")
    assert code == 2 and err.endswith("already holds results; choose another --out (or remove it)")
    assert (tmp_path / "o" / "summary.csv").read_text() == "strategy\noriginal\n"


def test_forgetting_every_client(trained_run, capsys, tmp_path):
    argv = ["forget", trained_run, "--strategy", "puf", "--out", tmp_path / "o"]
    for c in range(10):
        argv += ["--client", c]
    code, err = cli(capsys, *argv)
    assert code == 2 and "forget every one of the 10 clients" in err
    assert not (tmp_path / "o").exists()


def test_strategy_needing_history_on_a_run_without_it(trained_run, capsys, tmp_path):
    code, err = cli(capsys, "forget", trained_run, "--client", 1, "--strategy", "federaser", "--out", tmp_path / "o")
    assert code == 2 and "federaser needs the pseudo-gradient history" in err and "store.history=true" in err


def test_unknown_strategy_and_missing_run(trained_run, capsys, tmp_path):
    code, err = cli(capsys, "forget", trained_run, "--client", 1, "--strategy", "magic")
    assert code == 2 and "--strategy: unknown strategy 'magic'" in err
    code, err = cli(capsys, "forget", tmp_path / "nothing", "--client", 1, "--strategy", "puf")
    assert code == 2 and "RUN_DIR" in err


@pytest.mark.parametrize("overrides, message", [
    (["forget=[{clients=[0], round=50}]"], "forget[0].round: 50 is not a round the run reached (1..30)"),
    (["forget=[{clients=[0], round=10}, {clients=[0], round=20}]"], "client 0 is already forgotten"),
    (["forget=[{clients=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}]"], "forget every one of the 10 clients"),
    (["forget=[{clients=[10]}]"], "forget[0].clients: unknown client id 10"),
    (["store.history=false", "forgetting.strategies=['federaser']"], "federaser needs the pseudo-gradient history"),
    (["forget=[]", "forgetting.strategies=['puf']"], "forget: the experiment has no [[forget]] request"),
    (["forget=[{clients=[0]}]", "forgetting.puf.eta=-1"], "forgetting.puf.eta: must be > 0"),
])
def test_run_guards(capsys, tmp_path, overrides, message):
    argv = ["run", ROOT / "experiments/default.toml", "--out", tmp_path / "o"]
    for o in overrides:
        argv += ["--set", o]
    code, err = cli(capsys, *argv)
    assert code == 2 and message in err
    assert not (tmp_path / "o").exists()


def test_a_comparison_with_nothing_to_forget_is_refused():
    from fedunlearn.data import federated_data
    from fedunlearn.evaluation import Scorer

    cfg = load_config(ROOT / "experiments/default.toml")
    scorer = Scorer(cfg, federated_data(cfg.data, cfg.seed), [ForgetRequest([7], round=1)])
    same = scorer.initial_weights()
    with pytest.raises(ConfigError, match="forgetting.check_separation: on the forgotten clients the retrained model"):
        scorer.check_separation("forget_acc", same, same)  # a "retrained" model identical to the original
