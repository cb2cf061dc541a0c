"""The comparison run: train once, then every listed strategy from the same pre-forget snapshot,
score every model against the retrained one, and probe how fast each relearns.

Layout of ``DIR``::

    config.toml                 the resolved experiment
    seed-S/train/               the training run of seed S (rounds.csv, checkpoint, store)
    seed-S/strategies/NAME/     trajectory.csv, result.json, checkpoint/global.npz, store/
    seed-S/probe/MODE.csv       relearning curves: model, step, value, threshold, unit
    summary.csv, summary.json   one row per strategy and seed, plus ``original``

The reference (the strategy from scratch, retrain unless another is listed) runs first: its test
accuracy is the recovery target and every metric is also reported as its gap to the reference's
(same seed). A strategy whose result.json exists is not run again.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from fedunlearn.config import ConfigError, ExperimentConfig
from fedunlearn.data import federated_data
from fedunlearn.evaluation import Scorer
from fedunlearn.evaluation.metrics import METRICS, ModelView, evaluate_all
from fedunlearn.evaluation.probe import ProbeResult, delay_ratio, reaches, threshold
from fedunlearn.flower.runtime import Federation
from fedunlearn.io import atomic_write_text
from fedunlearn.parts import check_parts
from fedunlearn.phases.forget import load_snapshot, run_strategy
from fedunlearn.phases.probe import metric_value, probe_models, write_probes
from fedunlearn.phases.train import train_phase
from fedunlearn.results import RunDir, csv_text
from fedunlearn.strategies import StrategySpec

METRIC_COLUMNS = list(METRICS)
SUMMARY_COLUMNS = ["strategy", "seed", "from_scratch", *METRIC_COLUMNS, "recovery_rounds", "recovery_censored",
                   "relearn_delay", "relearn_censored", "relearn_ratio_to_retrain", "relearn_auc", "relearn_unit",
                   "rounds", "client_epochs", "bytes_exchanged", "wall_s", "notes"]


def gap_columns(columns: list[str]) -> list[str]:
    return [f"gap_{m}" for m in METRIC_COLUMNS if m in columns]


def with_gaps(rows: list[dict]) -> list[dict]:
    """Add ``gap_<metric>`` = |metric − the reference's metric| (same seed) to every row.

    The reference is the row of the strategy from scratch (``from_scratch``), retrain by default.
    """
    reference = {}
    for r in rows:
        if r.get("from_scratch") is True:
            reference.setdefault(r["seed"], r)
    for r in rows:
        ref = reference.get(r["seed"], {})
        for m in METRIC_COLUMNS:
            value, base = r.get(m), ref.get(m)
            ok = isinstance(value, float) and isinstance(base, float) and not math.isnan(value) and not math.isnan(base)
            r[f"gap_{m}"] = abs(value - base) if ok else ""
    return rows


def summary_columns(rows: list[dict]) -> list[str]:
    extra = sorted({k for r in rows for k in r if k.startswith("relearn_") and k not in SUMMARY_COLUMNS})
    return SUMMARY_COLUMNS + extra + gap_columns(SUMMARY_COLUMNS)


def write_summary(out: Path, rows: list[dict]) -> None:
    rows = with_gaps(rows)
    columns = summary_columns(rows)
    atomic_write_text(out / "summary.csv", csv_text([{k: fmt(r.get(k, "")) for k in columns} for r in rows], columns))
    atomic_write_text(out / "summary.json", json.dumps([{k: json_value(r.get(k, "")) for k in columns} for r in rows],
                                                        indent=1))


def fmt(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def json_value(value):
    if isinstance(value, float) and math.isnan(value):  # NaN is not JSON
        return None
    return None if value == "" else value


def check_original(cfg: ExperimentConfig, original: dict) -> None:
    """Refuse to compare strategies on a model that holds nothing to forget."""
    f = cfg.forgetting
    if original["test_acc"] < f.min_original_test_acc:
        raise ConfigError(f"forgetting.min_original_test_acc: the original model reached test accuracy "
                          f"{original['test_acc']:.3f} < {f.min_original_test_acc} (seed {cfg.seed}), so it never "
                          "converged; train longer (train.rounds, train.lr) before comparing strategies")
    asr = original["backdoor_asr"]
    if asr == asr and asr < f.min_original_backdoor_asr:
        raise ConfigError(f"forgetting.min_original_backdoor_asr: the original model's backdoor attack success rate is "
                          f"{asr:.3f} < {f.min_original_backdoor_asr} (seed {cfg.seed}): it never learnt the backdoor, "
                          "so no strategy can be told apart; strengthen it (data.backdoor.fraction, patch_size, "
                          "data.partition) before comparing")


def check_separation(cfg: ExperimentConfig, scorer: Scorer, original: list, retrain: list) -> None:
    """Refuse a comparison whose retrained model already scores like the original on the forget set."""
    if not cfg.forgetting.check_separation:
        return
    metric = cfg.probe_metric()
    value_o, value_r = metric_value(scorer, original, metric), metric_value(scorer, retrain, metric)
    if reaches(metric, value_r, threshold(metric, value_o, cfg.probe.alpha)):
        raise ConfigError(f"forgetting.check_separation: on the forgotten clients the retrained model scores "
                          f"{metric} = {value_r:.4f}, as the original does ({value_o:.4f}) within probe.alpha: there "
                          "is nothing measurable to forget, so strategies cannot be told apart; forget a client whose "
                          "data the others do not explain (a backdoor, mislabelled data) or use probe.metric = "
                          "forget_loss")


def probe_columns(results: dict[str, dict[str, ProbeResult]], name: str, reference: str) -> dict:
    """The relearn_* columns of one model; the first mode is unprefixed, others ``relearn_<mode>_*``."""
    out = {}
    for i, (mode, by_model) in enumerate(results.items()):
        res, prefix = by_model[name], "relearn" if i == 0 else f"relearn_{mode}"
        _, ratio = delay_ratio(res, by_model[reference])
        out.update({f"{prefix}_delay": res.delay_text, f"{prefix}_censored": res.censored,
                    f"{prefix}_ratio_to_retrain": ratio, f"{prefix}_auc": res.auc, f"{prefix}_unit": res.unit})
    return out


def compare_seed(fed: Federation, cfg: ExperimentConfig, specs: list[StrategySpec], out: Path, rows: list[dict],
                 log=print) -> None:
    """Train (or resume) seed ``cfg.seed``, run every strategy, score and probe every model.

    Rows go into ``rows`` and the summary is rewritten after each strategy, so a failure loses
    nothing already done. The forget set and the scorer are built once here.
    """
    seed_dir = out / f"seed-{cfg.seed}"
    train_dir = seed_dir / "train"
    scorer = Scorer(cfg, federated_data(cfg.data, cfg.seed), cfg.forgotten_clients())
    log(f"[seed {cfg.seed}] training {cfg.train.rounds} rounds")
    trained = train_phase(fed, cfg, train_dir, scorer, resume=(train_dir / "checkpoint").exists(), log=log)
    original = scorer.summary_metrics(trained.weights)
    check_original(cfg, original)
    snapshot = load_snapshot(cfg, train_dir, cfg.forget_requests()[0].round, scorer.initial_weights())
    seed_rows = [{"strategy": "original", "seed": cfg.seed, "from_scratch": False, **original}]
    models = {"original": trained.weights}
    reference, target = specs[0], None  # resolve_strategies puts the reference first
    for spec in specs:
        sdir = seed_dir / "strategies" / spec.label
        if (sdir / "result.json").exists():
            log(f"[seed {cfg.seed}] {spec.label}: already done, reusing {sdir}")
            weights, _ = RunDir(sdir).load_checkpoint()
            row = json.loads((sdir / "result.json").read_text())
        else:
            log(f"[seed {cfg.seed}] {spec.label}")
            outcome = run_strategy(fed, cfg, spec, snapshot, sdir, scorer, target, log=log)
            weights, row = outcome.weights, outcome.row()
        models[spec.label] = weights
        metrics = scorer.summary_metrics(weights)
        if spec is reference:
            target = metrics["test_acc"]
            check_separation(cfg, scorer, trained.weights, weights)
        seed_rows.append({**row, "seed": cfg.seed, **metrics})
        write_summary(out, rows + seed_rows)
    reference_view = ModelView.of(scorer, models[reference.label])
    for r in seed_rows:
        r.update(evaluate_all(scorer, models[r["strategy"]], reference_view))
    if cfg.probe.enabled:
        log(f"[seed {cfg.seed}] relearning-delay probe ({cfg.probe_metric()}, modes {cfg.probe.modes})")
        results = probe_models(fed, cfg, scorer, trained.weights, models, log=log)
        write_probes(seed_dir, results)
        for r in seed_rows:
            r.update(probe_columns(results, r["strategy"], reference.label))
    rows += seed_rows
    write_summary(out, rows)


def check_comparison(cfg: ExperimentConfig, seeds: int = 1) -> list[StrategySpec]:
    """What a comparison needs beyond a valid experiment: a request, seeds, valid parts."""
    if not cfg.forget:
        raise ConfigError("forget: the experiment has no [[forget]] request; add one, e.g. [[forget]] clients = [0]")
    if seeds < 1:
        raise ConfigError("--seeds: must be >= 1")
    return check_parts(cfg)


def compare(fed: Federation, cfg: ExperimentConfig, out: str | Path, seeds: int = 1, log=print) -> list[dict]:
    """The comparison over ``seeds`` seeds (cfg.seed, cfg.seed + 1, ...), written to ``out``.

    Checks every part first (:func:`check_comparison`, as the CLI does), and writes the config.
    """
    specs = check_comparison(cfg, seeds)
    out = Path(out)
    RunDir(out).write_config(cfg)
    rows: list[dict] = []
    for s in range(cfg.seed, cfg.seed + seeds):
        compare_seed(fed, dataclasses.replace(cfg, seed=s), specs, out, rows, log)
    return with_gaps(rows)
