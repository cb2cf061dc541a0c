"""Reliability: bad input, resources, diverging training, failing clients, resume with other settings.

The CLI rows run the real commands up to the point where they must refuse (before Ray starts).
The phase tests run fedunlearn's real ClientApp in process (:mod:`tests.local_grid`), so a whole
comparison takes seconds; the ``slow`` tests run the same phases on the Simulation Engine.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from fedunlearn import cli
from fedunlearn.cli import main
from fedunlearn.config import ConfigError, ForgetRequest, load_config
from fedunlearn.data import federated_data
from fedunlearn.evaluation import Scorer
from fedunlearn.flower import runtime
from fedunlearn.flower.runtime import ClientFailureError, check_resources
from fedunlearn.parts import load_experiment
from fedunlearn.phases.compare import compare
from fedunlearn.phases.train import train_phase
from fedunlearn.provenance import original_model
from fedunlearn.results import read_csv
from fedunlearn.strategies import TooFewClientsError
from tests.local_grid import local_federation

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "experiments/default.toml"
TINY = ["data.num_clients=4", "data.partition=iid", "model.name=mlp", "model.mlp.hidden=32", "train.rounds=3",
        "train.batch_size=16", "store.history=false", "forgetting.recovery_rounds=2", "forgetting.natural.rounds=1",
        "forgetting.min_original_test_acc=0", "forgetting.min_original_backdoor_asr=0",
        "forgetting.check_separation=false", "data.backdoor.clients=[1]", "forget=[{clients=[1]}]",
        "forgetting.strategies=['retrain', 'natural', 'puf']", "probe.max_rounds=2", "probe.modes=['all', 'alone']"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def two_cpus_no_gpu(monkeypatch):
    """The machine as these rows were found on: 2 CPUs, no GPU (whatever runs the test)."""
    monkeypatch.setattr(runtime, "machine_resources", lambda: {"CPU": 2.0, "GPU": 0.0})


def run_argv(*overrides: str, experiment: Path = DEFAULT) -> list[str]:
    return ["run", str(experiment), *[a for o in overrides for a in ("--set", o)]]


# One row per input of the reliability issue's table that used to hang, crash or pass silently.
ROWS = {
    "num_gpus on a machine without one": (run_argv("simulation.num_gpus=1"), "simulation.num_gpus: each client asks "
                                          "for 1 GPU(s) but this machine has 0; set simulation.num_gpus to 0"),
    "num_cpus beyond the machine": (run_argv("simulation.num_cpus=4"),
                                    "simulation.num_cpus: each client asks for 4 CPU(s) but this machine has 2"),
    "ray_address not a host:port": (run_argv("simulation.ray_address=nowhere"),
                                    "simulation.ray_address: 'nowhere' is not host:port"),
    "lr infinite": (run_argv("train.lr=inf"), "train.lr: must be a finite number > 0 (got inf)"),
    "local_test_fraction (gone)": (run_argv("data.local_test_fraction=0.99"), "data.local_test_fraction: unknown key"),
    "1400 clients on digits": (run_argv("data.num_clients=1400", "data.partition=iid"),
                               "data.num_clients: client 1347 gets no training sample (53 such clients of 1400"),
    "backdoor target beyond the classes": (run_argv("data.backdoor.target_label=99"),
                                           "data.backdoor.target_label: 99 is not a class of digits (0..9)"),
    "seed negative": (run_argv("seed=-1"), "seed: must be >= 0 (got -1)"),
    # seen only on the data: these used to start Ray and leave config.toml behind
    "class the data set lacks": (run_argv("forget=[{classes=[12]}]", "forgetting.strategies=['retrain', 'puf']"),
                                 "forget[0].classes: 12 is not a class of the data set (0..9)"),
    "poisoned samples of a clean client": (run_argv("forget=[{clients=[3], samples='poisoned'}]",
                                                    "forgetting.strategies=['retrain', 'puf']"),
                                           "forget[0].samples: client 3 has no poisoned samples"),
    "index beyond the client on the second seed": (
        [*run_argv("forget=[{clients=[7], samples=[200]}]", "forgetting.strategies=['retrain', 'puf']"), "--seeds", "2"],
        "forget[0].samples: index 200 is beyond client 7's 115 train samples"),  # 217 on seed 0
}


@pytest.mark.parametrize("name", list(ROWS))
def test_bad_input_gets_one_line_exit_2_and_writes_nothing(name, tmp_path, capsys, two_cpus_no_gpu):
    argv, message = ROWS[name]
    out = tmp_path / "deeper" / "out"
    code = main([*argv, "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert list(tmp_path.iterdir()) == []  # not even the --out folder


def test_ctrl_c_gets_one_line_and_exits_even_with_a_thread_left_waiting(tmp_path, capsys, monkeypatch):
    """Ctrl-C reaches Ray's processes too, and Flower's threads then wait for replies for good.

    The command used to print a traceback and hang at exit, joining them; it must exit with 130.
    """
    release = threading.Event()
    waiting = threading.Thread(target=release.wait)  # as Flower's ServerApp thread waits for replies
    waiting.start()
    exits: list[int] = []
    monkeypatch.setattr(cli.os, "_exit", exits.append)

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_train", interrupted)
    try:
        code = main(["train", str(DEFAULT), "--out", str(tmp_path / "out")])
    finally:
        release.set()
        waiting.join()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 130 and exits == [130], (code, exits)
    assert err == ["fedunlearn: error: interrupted (finished pieces are kept: rerun with --resume to continue)"]


def test_ray_address_with_nothing_there_fails_within_seconds(tmp_path, capsys):
    t0 = time.monotonic()
    code = main([*run_argv(f"simulation.ray_address=127.0.0.1:{free_port()}"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "simulation.ray_address: nothing answers at 127.0.0.1:" in err[0]
    assert time.monotonic() - t0 < 30
    assert not (tmp_path / "o").exists()


def test_resources_are_checked_against_the_cluster_too():
    cfg = load_config(None, ["simulation.ray_address=10.0.0.1:6379", "simulation.num_cpus=2"])
    with pytest.raises(ConfigError, match="the Ray cluster at 10.0.0.1:6379 has 1"):
        check_resources(cfg.simulation, {"CPU": 1.0})
    check_resources(cfg.simulation, {"CPU": 8.0, "GPU": 0.0})  # enough: no error
    gpu = load_config(None, ["simulation.num_gpus=0.5"]).simulation
    check_resources(gpu, {"CPU": 2.0, "GPU": 1.0})  # two clients share a GPU


def test_a_toml_file_that_is_not_utf8(tmp_path, capsys):
    bad = tmp_path / "latin1.toml"
    bad.write_bytes("seed = 0\n# caf\xe9\n".encode("latin-1"))
    code = main(["run", str(bad), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not UTF-8 text" in err[0] and "save it as UTF-8" in err[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("out", ["/proc/fedunlearn-test", "a-file/sub"])
def test_an_out_folder_that_cannot_be_created(out, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("not a folder")
    code = main(["train", str(DEFAULT), "--out", out])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"--out: cannot create {out}" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_probe_model_without_a_checkpoint(trained_run, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = main(["probe", str(trained_run), "--client", "7", "--model", str(tmp_path / "empty")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--model:" in err[0] and "holds no checkpoint" in err[0]
    assert not (trained_run / "probe").exists()


@pytest.mark.parametrize("summary", [None, "", "a,b\n1\n", "strategy,seed\n"])
def test_plot_on_a_folder_that_is_not_a_results_folder(summary, tmp_path, capsys):
    folder = tmp_path / "f"
    folder.mkdir()
    if summary is not None:
        (folder / "summary.csv").write_text(summary)
    code = main(["plot", str(folder)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "RUN_DIR:" in err[0]
    assert not (folder / "plots").exists()


def test_the_same_client_twice_on_the_command_line(trained_run, tmp_path, capsys):
    code = main(["forget", str(trained_run), "--client", "7", "--client", "7", "--strategy", "puf",
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--client: a client is named twice" in err[0]
    assert not (tmp_path / "o").exists()


# -- phases on the in-process grid ------------------------------------------------------------

def tiny(*extra: str):
    return load_experiment(DEFAULT, [*TINY, *extra])


def test_training_that_diverges_stops_naming_the_learning_rate(tmp_path):
    cfg = tiny("train.lr=1e30", "forget=[]", "data.backdoor.clients=[]", "probe.metric=auto")
    scorer = Scorer(cfg, federated_data(cfg.data, cfg.seed), [])
    with pytest.raises(ConfigError, match=r"train.lr: training round 1 left NaN or Inf .* lower train.lr"):
        train_phase(local_federation(4), cfg, tmp_path / "t", scorer, log=lambda *_: None)


def test_a_probe_that_diverges_stops_naming_its_learning_rate(tmp_path):
    """A NaN model's forget metric never reaches the threshold: it must not read as "never relearnt"."""
    cfg = tiny("probe.alone_lr=1e30", "probe.alone_max_steps=5", "probe.modes=['alone']", "train.rounds=1",
               "forgetting.strategies=['retrain']")
    with pytest.raises(ConfigError, match=r"^probe.alone_lr: the alone probe of original left NaN or Inf in the "
                                          r"weights after \d steps \(probe.alone_lr = 1e\+30\); lower probe.alone_lr"):
        compare(local_federation(4, log=lambda *_: None), cfg, tmp_path / "cmp", log=lambda *_: None)
    assert not (tmp_path / "cmp" / "seed-0" / "probe" / "alone" / "original" / "result.json").exists()


def fail_client_1(pid, msg):
    if pid == 1:
        msg.content["config"]["local-epochs"] = "not-a-number"


def test_a_client_failing_every_round_is_logged_then_stops_the_run(tmp_path):
    cfg = tiny("train.min_train_clients=3", "train.rounds=5")
    lines: list[str] = []
    fed = local_federation(4, fail_client_1, max_failed_rounds=3, failure_log=tmp_path / "failures.log",
                           log=lines.append)
    scorer = Scorer(cfg, federated_data(cfg.data, cfg.seed), [ForgetRequest([1], round=1)])
    with pytest.raises(ClientFailureError, match="simulation.max_failed_rounds: client 1 failed in 3 rounds in a row"):
        train_phase(fed, cfg, tmp_path / "t", scorer, log=lambda *_: None)
    assert len(lines) == 3 and all("1 of 4 clients failed (client 1: " in line for line in lines)
    assert all("Traceback" not in line for line in lines)
    log = (tmp_path / "failures.log").read_text()
    assert log.count("=== training round") == 3 and log.count("Traceback (most recent call last)") == 3
    assert "not-a-number" in log
    rows = read_csv(tmp_path / "t" / "rounds.csv")
    assert [r["failures"] for r in rows] == ["1", "1"]  # rounds 1-2 done with 3 clients; round 3 stopped


def test_a_client_failing_now_and_then_is_counted_and_its_streak_resets(tmp_path):
    cfg = tiny("train.min_train_clients=3", "train.rounds=4")
    lines: list[str] = []

    def fail_in_rounds_1_and_3(pid, msg):
        if pid == 2 and int(msg.content["config"]["server-round"]) in (1, 3):
            msg.content["config"]["local-epochs"] = "not-a-number"

    fed = local_federation(4, fail_in_rounds_1_and_3, max_failed_rounds=2, log=lines.append)
    scorer = Scorer(cfg, federated_data(cfg.data, cfg.seed), [ForgetRequest([1], round=1)])
    result = train_phase(fed, cfg, tmp_path / "t", scorer, log=lambda *_: None)  # two failures, never in a row
    assert [r["failures"] for r in result.rows] == [1, 0, 1, 0] and [r["clients"] for r in result.rows] == [3, 4, 3, 4]
    assert len(lines) == 2 and "training round 3: 1 of 4 clients failed (client 2: " in lines[1]


def test_every_client_required_stops_at_the_first_failure_with_one_line(tmp_path):
    cfg = tiny()
    fed = local_federation(4, fail_client_1, failure_log=tmp_path / "failures.log", log=lambda *_: None)
    scorer = Scorer(cfg, federated_data(cfg.data, cfg.seed), [ForgetRequest([1], round=1)])
    with pytest.raises(TooFewClientsError) as err:
        train_phase(fed, cfg, tmp_path / "t", scorer, log=lambda *_: None)
    message = str(err.value)
    assert message.startswith("train.min_train_clients: in round 1 3 of 4 sampled clients succeeded")
    assert "client 1: " in message and "\n" not in message
    assert "Traceback" in (tmp_path / "failures.log").read_text()


def mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_resume_with_a_changed_strategy_setting_recomputes_exactly_that_strategy(tmp_path):
    out, logs = tmp_path / "cmp", []
    fed = local_federation(4, log=lambda *_: None)
    compare(fed, tiny(), out, log=lambda *_: None)
    before = mtimes(out)
    compare(fed, tiny("forgetting.puf.eta=5"), out, log=logs.append)
    after = mtimes(out)
    changed = {k for k in after if before.get(k) != after[k]}
    seed = "seed-0/"
    puf = {k for k in changed if k.startswith((f"{seed}strategies/puf/", f"{seed}probe/all/puf/",
                                               f"{seed}probe/alone/puf/"))}
    assert f"{seed}strategies/puf/result.json" in puf and f"{seed}probe/alone/puf/result.json" in puf
    assert changed - puf <= {"config.toml", "summary.csv", "summary.json", f"{seed}probe/all.csv",
                             f"{seed}probe/alone.csv", f"{seed}train/config.toml"}
    assert any("strategies/puf: computed with other settings (parts.puf.eta 20.0 -> 5.0)" in m for m in logs)
    recorded = json.loads((out / seed / "strategies/puf/settings.json").read_text())["settings"]
    assert recorded["parts"]["puf"]["eta"] == 5.0
    assert load_config(out / "config.toml").forgetting.settings["puf"]["eta"] == 5.0
    assert {r["strategy"] for r in read_csv(out / "summary.csv")} == {"original", "retrain", "natural", "puf"}
    assert (out / seed / "train" / "label_distribution.png").stat().st_size > 10_000  # drawn with the training


def test_resume_with_a_changed_training_setting_recomputes_everything_and_drops_what_left(tmp_path):
    out, logs = tmp_path / "cmp", []
    fed = local_federation(4, log=lambda *_: None)
    compare(fed, tiny(), out, log=lambda *_: None)
    compare(fed, tiny("train.lr=0.02", "forgetting.strategies=['retrain', 'puf']", "probe.modes=['all']"), out,
            log=logs.append)
    assert any("train: computed with other settings (train.lr 0.05 -> 0.02)" in m for m in logs)
    assert not (out / "seed-0/strategies/natural").exists() and not (out / "seed-0/probe/alone.csv").exists()
    assert not (out / "seed-0/probe/alone").exists()
    record = {p: json.loads((out / "seed-0" / p / "settings.json").read_text())
              for p in ["train", "strategies/retrain", "strategies/puf", "probe/all/original", "probe/all/puf"]}
    assert record["train"]["settings"]["train"]["lr"] == 0.02
    train_fp = record["train"]["fingerprint"]
    assert record["strategies/retrain"]["settings"]["training"] == record["strategies/puf"]["settings"]["training"] \
        == train_fp
    assert record["probe/all/puf"]["settings"]["original"] == record["probe/all/original"]["settings"]["model"] \
        == original_model(train_fp, tiny("train.lr=0.02"))


def test_train_never_clears_a_folder_it_did_not_write(tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    (out / "precious.txt").write_text("a user's file")
    code = main(["train", str(DEFAULT), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "holds files with no record of the settings" in err[0]
    assert [p.name for p in out.iterdir()] == ["precious.txt"]
    cfg = tiny("forget=[]", "data.backdoor.clients=[]", "probe.metric=auto")
    with pytest.raises(ConfigError, match="no record of the settings"):  # the phase refuses it too
        train_phase(local_federation(4), cfg, out, Scorer(cfg, federated_data(cfg.data, cfg.seed), []))


def test_more_training_rounds_resume_training_and_recompute_what_uses_the_final_model(tmp_path):
    out, logs = tmp_path / "cmp", []
    fed = local_federation(4, log=lambda *_: None)
    compare(fed, tiny(), out, log=lambda *_: None)
    compare(fed, tiny("train.rounds=4"), out, log=logs.append)
    assert any("resuming" in m and "after round 3" in m for m in logs)  # training goes on, not again
    assert any("probe/all/original: computed with other settings" in m for m in logs)
    assert any("strategies/puf: computed with other settings (" in m and "rounds 3 -> 4" in m for m in logs)
    assert [r["round"] for r in read_csv(out / "seed-0" / "train" / "rounds.csv")] == ["1", "2", "3", "4"]
