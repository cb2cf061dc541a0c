"""The comparison run: train once, then every listed strategy from the same pre-forget snapshot.

Layout of ``DIR``::

    config.toml                 the resolved experiment
    seed-S/train/               the training run of seed S (rounds.csv, checkpoint, store)
    seed-S/strategies/NAME/     trajectory.csv, result.json, checkpoint/global.npz, store/
    summary.csv, summary.json   one row per strategy and seed, plus ``original``

Retrain runs first: its test accuracy is the recovery target and every metric is also reported
as its gap to retrain's. A strategy whose result.json exists is not run again (resume).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from fedunlearn.config import ConfigError, ExperimentConfig
from fedunlearn.data import federated_data
from fedunlearn.evaluation import Scorer
from fedunlearn.federation import Federation
from fedunlearn.io import atomic_write_text
from fedunlearn.phases.forget import load_snapshot, run_strategy
from fedunlearn.phases.train import train_phase
from fedunlearn.results import RunDir, csv_text

SUMMARY_COLUMNS = ["strategy", "seed", "test_acc", "retain_acc", "forget_acc", "backdoor_asr", "recovery_rounds",
                   "recovery_censored", "rounds", "client_epochs", "bytes_exchanged", "wall_s", "notes"]
METRIC_COLUMNS = ["test_acc", "retain_acc", "forget_acc", "backdoor_asr"]


def ordered_strategies(cfg: ExperimentConfig) -> list[str]:
    """Retrain first (the reference), then the others in the order listed."""
    names = list(dict.fromkeys(cfg.forgetting.strategies))
    return ["retrain"] + [n for n in names if n != "retrain"]


def with_gaps(rows: list[dict]) -> list[dict]:
    """Add ``gap_<metric>`` = |metric − retrain's metric| (same seed) to every row."""
    reference = {r["seed"]: r for r in rows if r["strategy"] == "retrain"}
    for r in rows:
        ref = reference.get(r["seed"])
        for m in METRIC_COLUMNS:
            value, base = r.get(m), ref.get(m) if ref else None
            r[f"gap_{m}"] = abs(value - base) if isinstance(value, float) and isinstance(base, float) else ""
    return rows


def write_summary(out: Path, rows: list[dict]) -> None:
    rows = with_gaps(rows)
    columns = SUMMARY_COLUMNS + [f"gap_{m}" for m in METRIC_COLUMNS]
    atomic_write_text(out / "summary.csv", csv_text([{k: fmt(r.get(k, "")) for k in columns} for r in rows], columns))
    atomic_write_text(out / "summary.json", json.dumps([{k: json_value(r.get(k, "")) for k in columns} for r in rows],
                                                        indent=1))


def fmt(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def json_value(value):
    if isinstance(value, float) and value != value:  # NaN is not JSON
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


def compare_seed(fed: Federation, cfg: ExperimentConfig, out: Path, rows: list[dict], log=print) -> None:
    """Train (or resume) seed ``cfg.seed`` and run every strategy, adding summary rows to ``rows``
    and rewriting the summary after each (so a failure loses nothing already done)."""
    seed_dir = out / f"seed-{cfg.seed}"
    train_dir = seed_dir / "train"
    log(f"[seed {cfg.seed}] training {cfg.train.rounds} rounds")
    resume = (train_dir / "checkpoint").exists()
    trained = train_phase(fed, cfg, train_dir, resume=resume, log=log)
    data = federated_data(cfg.data, cfg.seed)
    forgotten = sorted(c for r in cfg.forget_requests() for c in r.clients)
    scorer = Scorer(cfg, data, forgotten)
    snapshot = load_snapshot(cfg, train_dir, cfg.forget_requests()[0].round, scorer.initial_weights())
    original = scorer.summary_metrics(trained.weights)
    check_original(cfg, original)
    rows.append({"strategy": "original", "seed": cfg.seed, **original})
    retrain_acc = None
    for name in ordered_strategies(cfg):
        sdir = seed_dir / "strategies" / name
        if (sdir / "result.json").exists():
            log(f"[seed {cfg.seed}] {name}: already done, reusing {sdir}")
            weights, _ = RunDir(sdir).load_checkpoint()
            row = json.loads((sdir / "result.json").read_text())
        else:
            log(f"[seed {cfg.seed}] {name}")
            outcome = run_strategy(fed, cfg, name, snapshot, sdir, retrain_acc, log=log)
            weights, row = outcome.weights, outcome.row()
        metrics = scorer.summary_metrics(weights)
        if name == "retrain":
            retrain_acc = metrics["test_acc"]
        rows.append({**row, "seed": cfg.seed, **metrics})
        write_summary(out, rows)


def compare(fed: Federation, cfg: ExperimentConfig, out: str | Path, seeds: int = 1, log=print) -> list[dict]:
    """The comparison over ``seeds`` seeds (cfg.seed, cfg.seed + 1, ...); writes the summary after each."""
    out = Path(out)
    rows: list[dict] = []
    for s in range(cfg.seed, cfg.seed + seeds):
        compare_seed(fed, dataclasses.replace(cfg, seed=s), out, rows, log)
    return with_gaps(rows)
