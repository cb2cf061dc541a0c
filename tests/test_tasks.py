"""The task abstraction: the generative task's scorer and objective, and what it refuses before training."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedunlearn.cli import main
from fedunlearn.config import ConfigError, ForgetRequest, load_config
from fedunlearn.data import federated_data
from fedunlearn.parts import check_parts, load_experiment
from fedunlearn.phases.compare import SeedPieces
from fedunlearn.strategies import resolve_strategies
from fedunlearn.strategies.fedavg import federation_spec
from fedunlearn.tasks import probe_metric, task_of
from fedunlearn.training import get_weights, set_weights, train_local

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.num_clients=3", "train.rounds=2", "task.generative.samples=20", "task.generative.burn_in=5"]


def generative(*overrides: str):
    return load_config(ROOT / "experiments/rbm.toml", [*TINY, *overrides])


@pytest.mark.parametrize("overrides, message", [
    (["forgetting.strategies=['retrain', 'trw']"], "forgetting.strategies: trw needs a classifier"),
    (["forgetting.strategies=['retrain', 'output-filter']"], "output-filter needs a classifier"),
    (["forgetting.strategies=['retrain', 'puf+mask']"], "puf+mask needs a classifier"),
    (["forgetting.strategies=['retrain', 'pga+augment']"], "pga+augment needs a classifier"),
    (["forgetting.strategies=['retrain', 'influence']"], "influence needs a classifier"),
    (["probe.metric='forget_acc'"], "probe.metric: 'forget_acc' does not apply to the generative task"),
    (["probe.metric='backdoor'"], "use auto (the task's forget metric"),  # never a fix the task refuses
    (["data.backdoor.clients=[0]"], "data.backdoor.clients: a backdoor is measured by a classifier"),
    (["data.binarize=0"], "data.binarize: the generative task models binary data"),
])
def test_classifier_only_parts_are_refused_before_training(capsys, tmp_path, overrides, message):
    argv = ["run", ROOT / "experiments/rbm.toml", "--out", tmp_path / "o"]
    for o in [*TINY, *overrides]:
        argv += ["--set", o]
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "o").exists()


def test_a_classifier_probe_metric_is_refused_and_auto_resolves_per_task():
    assert probe_metric(generative("probe.metric='auto'")) == "forget_ll"
    assert probe_metric(load_config(ROOT / "experiments/class.toml", ["probe.metric='auto'"])) == "forget_acc"
    with pytest.raises(ConfigError, match="probe.metric: 'forget_ll' does not apply to the classification task"):
        check_parts(load_config(ROOT / "experiments/class.toml", ["probe.metric='forget_ll'"]))


def test_task_and_model_must_match_before_training():
    with pytest.raises(ConfigError, match="model.name: the generative task needs an energy model"):
        load_experiment(ROOT / "experiments/rbm.toml", [*TINY, "model.name='mlp'"])
    with pytest.raises(ConfigError, match="model.name: 'rbm' is an energy model without class outputs"):
        load_experiment(ROOT / "experiments/rbm.toml", [*TINY, "task.name='classification'", "probe.metric='auto'"])


def test_binarize_makes_binary_data_and_clients_get_the_task():
    cfg = generative()
    data = federated_data(cfg.data, cfg.seed)
    assert set(np.unique(data.clients[0].x_train)) == {0.0, 1.0}
    assert json.loads(federation_spec(cfg))["task"]["name"] == "generative"


@pytest.fixture(scope="module")
def scored():
    """A generative scorer on a class-7 request, an RBM trained a little by the task's objective (the original)
    and one trained the same way without class 7 (a reference)."""
    cfg = generative()
    data = federated_data(cfg.data, cfg.seed)
    task = task_of(cfg)
    scorer = task.scorer(cfg, data, cfg.forget_requests())
    x = np.concatenate([c.x_train for c in data.clients])
    y = np.concatenate([c.y_train for c in data.clients])
    trained = {}
    for name, keep in [("original", np.ones(len(y), bool)), ("reference", y != 7)]:
        set_weights(scorer.model, scorer.initial_weights())
        train_local(scorer.model, x[keep], y[keep], epochs=4, batch_size=32, lr=0.05, momentum=0.5,
                    objective=task.objective(0))
        trained[name] = get_weights(scorer.model)
    return scorer, trained["original"], trained["reference"]


def test_generative_metrics_are_consistent(scored):
    scorer, original, _ = scored
    m = scorer.summary_metrics(original)
    initial = scorer.summary_metrics(scorer.initial_weights())
    assert m["test_ll"] > initial["test_ll"] + 5  # CD training through train_local's objective learnt the data
    assert m["forget_gap"] == pytest.approx(m["forget_ll"] - m["test_ll"])
    assert m["free_energy_gap"] == pytest.approx(-m["forget_gap"], abs=1e-4)  # log Z cancels in one model
    assert np.isnan(m["val_ll"]) == (not scorer.has_validation)
    assert 0 <= m["gen_forget_share"] <= 1 and 0 <= m["gen_entropy"] <= np.log(10) + 1e-9
    assert 0.8 < m["aux_test_acc"] <= 1
    assert set(scorer.round_metrics(original)) == set(scorer.round_columns)


def test_a_model_without_the_class_scores_the_class_lower_and_the_probe_value_is_normalised(scored):
    scorer, original, reference = scored
    assert scorer.forget_ll(reference) < scorer.forget_ll(original) - 1  # the forget gap separates
    value = scorer.probe_value("forget_ll", original, reference)
    assert value(original) == pytest.approx(1) and value(reference) == pytest.approx(0)
    assert np.isnan(scorer.probe_value("forget_ll", original, original)(reference))  # nothing to relearn: n/a
    from fedunlearn.evaluation.probe import ProbeResult, delay_ratio
    unmeasurable = ProbeResult("forget_ll", "rounds", [float("nan")] * 4, float("nan"))
    assert unmeasurable.delay_text == "n/a" and not unmeasurable.censored
    assert delay_ratio(unmeasurable, ProbeResult("forget_ll", "rounds", [0.0, 0.5, 1.0], 0.95))[1] == "n/a (not measurable)"
    scorer.check_separation("forget_ll", original, reference)
    with pytest.raises(ConfigError, match="forgetting.check_separation: the retrained model's forget"):
        scorer.check_separation("forget_ll", original, original)
    scorer.check_original(scorer.summary_metrics(original))
    with pytest.raises(ConfigError, match="train.rounds: the original model's test log-likelihood"):
        scorer.check_original(scorer.summary_metrics(scorer.initial_weights()))


def test_generative_objective_is_seeded():
    cfg = generative()
    task = task_of(cfg)
    scorer = task.scorer(cfg, federated_data(cfg.data, cfg.seed), [ForgetRequest(classes=[7])])
    x = torch.from_numpy(scorer.x_retain[:32])
    losses = [float(task.objective(s)(scorer.model, x, None).detach()) for s in (1, 1, 2)]
    assert losses[0] == losses[1] != losses[2]


@pytest.mark.slow
def test_a_generative_comparison_runs_end_to_end(tmp_path):
    """retrain, PUF + IEU and PGA on an RBM through Flower: the generative columns and gaps, no classifier column."""
    out = tmp_path / "rbm"
    argv = ["run", str(ROOT / "experiments/rbm.toml"), "--out", str(out)]
    for o in [*TINY, "train.rounds=3", "forgetting.strategies=['retrain', 'puf-ieu', 'pga']",
              "forgetting.recovery_rounds=1", "probe.max_rounds=2", "forgetting.check_separation=false"]:
        argv += ["--set", o]
    assert main(argv) == 0
    import csv
    rows = {r["strategy"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert set(rows) == {"original", "retrain", "puf-ieu", "pga"}
    for column in ("forget_ll", "forget_gap", "free_energy_gap", "gen_entropy", "relearn_delay", "gap_forget_ll"):
        assert all(rows[s][column] != "" for s in rows), column
    assert "test_acc" not in rows["retrain"] and "mia_efficacy" not in rows["retrain"]
    assert float(rows["retrain"]["gap_forget_ll"]) == 0 and rows["retrain"]["relearn_ratio_to_retrain"] == "1.00"
    assert (out / "plots" / "generated_samples.png").exists() and (out / "plots" / "likelihood_over_rounds.png").exists()


@pytest.mark.parametrize("config, normalised", [("rbm.toml", True), ("class.toml", False)])
def test_a_probe_normalised_by_the_reference_is_stale_once_the_reference_changes(tmp_path, config, normalised):
    """The generative probe's r(M) is 0 at the reference, so the original's probe is recomputed when the
    reference changes; a classifier's probe reads no reference and keeps its pieces."""
    overrides = [*TINY] if config == "rbm.toml" else ["data.num_clients=3", "train.rounds=2"]
    cfg = load_config(ROOT / "experiments" / config, [*overrides, "forgetting.strategies=['retrain', 'puf']"])
    specs = resolve_strategies(cfg)
    relabelled = [dataclasses.replace(specs[0], label="exact"), *specs[1:]]
    before, after = (SeedPieces.of(cfg, s, tmp_path) for s in (specs, relabelled))
    assert before.strategies["retrain"].fingerprint != after.strategies["exact"].fingerprint
    original = [p.probes["all", "original"].fingerprint for p in (before, after)]
    assert (original[0] != original[1]) == normalised


def trained_run(folder: Path, cfg) -> Path:
    """A folder as ``fedunlearn train`` leaves it (config and checkpoint), its model the initial one: enough for
    everything the probe command checks before it starts a federation."""
    from fedunlearn.results import RunDir

    run = RunDir(folder)
    run.write_config(cfg)
    scorer = task_of(cfg).scorer(cfg, federated_data(cfg.data, cfg.seed))
    run.save_checkpoint(scorer.initial_weights(), cfg.train.rounds)
    return folder


def test_the_probe_command_normalises_the_generative_probe_by_the_reference_it_is_given(tmp_path, capsys):
    from fedunlearn.phases.probe import prepare_probe
    from fedunlearn.results import RunDir

    run = trained_run(tmp_path / "train", generative())
    reference = trained_run(tmp_path / "retrain", generative("seed=1"))  # any other model will do
    code = main(["probe", str(run), "--class", "7"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--reference: the probe metric forget_ll is normalised" in err[0], err
    assert not (run / "probe").exists()
    job = prepare_probe(run, ForgetRequest(classes=[7]), "auto", "all", None, [], str(reference))
    want, _ = RunDir(reference).load_checkpoint()
    assert all(np.array_equal(a, b) for a, b in zip(job.reference, want, strict=True))
    with pytest.raises(ConfigError, match="--reference: .* holds no checkpoint"):
        prepare_probe(run, ForgetRequest(classes=[7]), "auto", "all", None, [], str(tmp_path))
    classifier = trained_run(tmp_path / "class", load_config(ROOT / "experiments/class.toml", ["data.num_clients=3"]))
    with pytest.raises(ConfigError, match="--reference: the probe metric forget_acc reads no reference model"):
        prepare_probe(classifier, ForgetRequest(classes=[7]), "auto", "all", None, [], str(reference))


def test_an_unmeasurable_probe_runs_no_rounds_and_says_why():
    """r is NaN at the original when it and the reference do not separate: every curve is n/a from the
    start, so no federation round is spent on it (``fed`` is None here: a round would fail)."""
    from fedunlearn.phases.probe import probe_models

    class Unseparated:
        num_arrays = 1

        def probe_value(self, metric, original, reference):
            return lambda weights: float("nan")

    cfg = generative("probe.modes=['all', 'alone']", "probe.max_rounds=3", "probe.alone_max_steps=4")
    logs = []
    results = probe_models(None, cfg, Unseparated(), [np.zeros(2)], {"original": [np.zeros(2)], "puf": [np.ones(2)]},
                           log=logs.append)
    assert {mode: {n: (r.delay_text, r.unit, r.cap) for n, r in by.items()} for mode, by in results.items()} == {
        "all": {"original": ("n/a", "rounds", 3), "puf": ("n/a", "rounds", 3)},
        "alone": {"original": ("n/a", "steps", 4), "puf": ("n/a", "steps", 4)}}
    assert any("forget_ll is not measurable" in line for line in logs)


def test_the_forget_commands_rows_say_what_was_forgotten(monkeypatch, tmp_path):
    """summary.csv's ``forgotten`` column, filled by a comparison, is filled by ``fedunlearn forget`` too."""
    from types import SimpleNamespace

    from fedunlearn.phases import forget
    from fedunlearn.phases.forget import Cost, ForgetJob, StrategyOutcome

    cfg = dataclasses.replace(generative(), forget=[ForgetRequest(classes=[7], round=2)])
    monkeypatch.setattr(forget, "run_strategy", lambda *a, **k: StrategyOutcome("puf", [], [], Cost()))
    scorer = SimpleNamespace(summary_metrics=lambda weights: {"forget_ll": -27.0})
    job = ForgetJob(cfg, SimpleNamespace(label="puf"), SimpleNamespace(weights=[]), scorer)
    rows = job.run(None, tmp_path)
    assert [(r["strategy"], r["forgotten"]) for r in rows] == [("original", "class 7"), ("puf", "class 7")]
    assert load_config(tmp_path / "config.toml").forget[0].classes == [7]  # the folder says what it computed


def test_the_samples_file_records_the_data_sets_classes(scored, tmp_path):
    scorer, original, _ = scored
    scorer.write_artifacts({"original": original}, tmp_path)
    with np.load(tmp_path / "samples.npz") as z:
        assert int(z["num_classes"]) == 10 and z["forget_classes"].tolist() == [7]
        assert len(z["original/labels"]) == scorer.settings.samples


def test_the_serverapp_scores_on_one_blas_thread_so_rays_forks_cannot_deadlock():
    """A resumed generative comparison fits the auxiliary classifier while Ray forks its processes: with
    numpy's OpenBLAS on worker threads, its pre-fork handler waited on them forever (the run hung)."""
    from threadpoolctl import threadpool_info

    from fedunlearn.flower.runtime import fork_safe

    def blas_threads(fed=None) -> list[int]:
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    before = blas_threads()
    assert set(fork_safe(blas_threads, None)) == {1}
    assert blas_threads() == before  # the limit holds for the ServerApp's job only
