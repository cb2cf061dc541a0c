"""The comparison run: train once, then every listed strategy from the same pre-forget snapshot,
score every model against the retrained one, and probe how fast each relearns.

Layout of ``DIR``::

    config.toml                 the resolved experiment
    seed-S/train/               the training run of seed S (rounds.csv, checkpoint, store)
    seed-S/strategies/NAME/     trajectory.csv, result.json, checkpoint/global.npz, store/
    seed-S/probe/MODE.csv       relearning curves: model, step, value, threshold, unit
    summary.csv, summary.json   one row per strategy and seed, plus ``original``

The reference (the strategy from scratch, retrain unless another is listed) runs first: its test
accuracy (its validation accuracy when ``data.validation`` holds a split out) is the recovery
target and every metric is also reported as its gap to the reference's (same seed). Each piece (a seed's training, each strategy, each model's probe) records the
settings it depends on (:mod:`fedunlearn.provenance`): with the same settings a finished piece is
reused, otherwise it is recomputed, so the folder's config.toml describes every result in it.

With ``estimate = true`` on a listed ``influence`` strategy (and one request, at the last round)
the ``original`` row also holds :data:`~fedunlearn.strategies.influence.ESTIMATE_COLUMNS`: the
dual's prediction of the reference from θ̂, scored against it (absent otherwise).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

from fedunlearn.config import ConfigError, ExperimentConfig, config_to_dict, to_toml
from fedunlearn.data import federated_data
from fedunlearn.dilution import load_mask
from fedunlearn.evaluation.probe import ProbeResult, delay_ratio
from fedunlearn.flower.runtime import Federation
from fedunlearn.io import atomic_write_text
from fedunlearn.parts import check_forget_sets, check_parts, for_seed
from fedunlearn.phases.forget import load_snapshot, run_strategy
from fedunlearn.phases.probe import ProbeCache, probe_models, write_probes
from fedunlearn.phases.train import train_phase
from fedunlearn.provenance import (
    Piece,
    original_model,
    probe_settings,
    strategy_settings,
    training_settings,
)
from fedunlearn.results import RunDir, csv_text
from fedunlearn.strategies import StrategySpec
from fedunlearn.strategies.influence import (
    ESTIMATE_COLUMNS,
    estimate_applies,
    estimate_settings,
    retrain_estimate,
)
from fedunlearn.tasks import GAPPED_COLUMNS, METRIC_COLUMNS, TASK_METRICS, probe_metric, task_of

SUMMARY_COLUMNS = ["strategy", "spec", "seed", "forgotten", "from_scratch", *METRIC_COLUMNS, "recovery_rounds",
                   "recovery_censored", "relearn_delay", "relearn_censored", "relearn_ratio_to_retrain", "relearn_auc", "relearn_unit",
                   "rounds", "client_epochs", "bytes_exchanged", "wall_s", "notes"]


AVERAGE_GAP = ("unlearn_acc", "mia_efficacy", "retain_acc", "test_acc")  # the centralized literature's


def gap_columns(columns: list[str]) -> list[str]:
    return ["avg_gap"] + [f"gap_{m}" for m in GAPPED_COLUMNS if m in columns]


def with_gaps(rows: list[dict]) -> list[dict]:
    """Add ``gap_<metric>`` = |metric − the reference's metric| (same seed) to every row, and ``avg_gap``.

    The reference is the row of the strategy from scratch (``from_scratch``), retrain by default.
    The Average Gap is the mean of the gaps in UA, MIA-efficacy, RA and TA (docs/methods.md, "Metrics").
    """
    reference = {}
    for r in rows:
        if r.get("from_scratch") is True:
            reference.setdefault(r["seed"], r)
    for r in rows:
        ref = reference.get(r["seed"], {})
        for m in GAPPED_COLUMNS:
            value, base = r.get(m), ref.get(m)
            ok = isinstance(value, float) and isinstance(base, float) and not math.isnan(value) and not math.isnan(base)
            r[f"gap_{m}"] = abs(value - base) if ok else ""
        parts = [r[f"gap_{m}"] for m in AVERAGE_GAP]
        r["avg_gap"] = sum(parts) / len(parts) if all(isinstance(p, float) for p in parts) else ""
    return rows


def summary_columns(rows: list[dict]) -> list[str]:
    """SUMMARY_COLUMNS (the metric columns of the tasks whose metrics the rows hold, all of them even
    before every metric is in), the extra probe modes' columns, the influence estimate's when a row
    has them, the gaps."""
    present = {k for r in rows for k in r}
    mine = {m for metrics in TASK_METRICS.values() if present & set(metrics) - {"weight_dist_to_retrain"}
            for m in metrics}
    base = [c for c in SUMMARY_COLUMNS if c not in METRIC_COLUMNS or c in mine]
    extra = sorted({k for r in rows for k in r if k.startswith("relearn_") and k not in SUMMARY_COLUMNS})
    estimate = [c for c in ESTIMATE_COLUMNS if any(c in r for r in rows)]
    return base + extra + estimate + gap_columns(base)


def write_summary(out: Path, rows: list[dict]) -> None:
    rows = with_gaps(rows)
    columns = summary_columns(rows)
    atomic_write_text(out / "summary.csv", csv_text([{k: fmt(r.get(k, "")) for k in columns} for r in rows], columns))
    atomic_write_text(out / "summary.json", json.dumps([{k: json_value(r.get(k, "")) for k in columns} for r in rows],
                                                        indent=1))


def write_comparison(out: Path, rows: list[dict], probes: dict[str, ProbeResult], reference: str = "retrain",
                     mode: str = "all") -> None:
    """Write a comparison measured elsewhere (anyone's ServerApp) in this module's layout.

    ``rows`` hold one dict per model (``strategy``, ``seed`` and any metric of
    :data:`METRIC_COLUMNS`, e.g. ``forget_acc``); ``probes`` their relearning probes by the same
    names. The reference row is marked ``from_scratch``, every metric gets its gap to it, and the
    probe's delay its ratio to the reference's: ``fedunlearn report`` and
    :func:`fedunlearn.report.draw_all` then read the folder like any comparison's.
    """
    rows = [dict(r) for r in rows]
    for r in rows:
        r.setdefault("from_scratch", r["strategy"] == reference)
        if r["strategy"] in probes:
            r.update(probe_columns({mode: probes}, r["strategy"], reference))
    for seed in sorted({r["seed"] for r in rows}):
        write_probes(out / f"seed-{seed}", {mode: probes})
    write_summary(out, rows)


def fmt(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def json_value(value):
    if isinstance(value, float) and math.isnan(value):  # NaN is not JSON
        return None
    return None if value == "" else value


def probe_columns(results: dict[str, dict[str, ProbeResult]], name: str, reference: str) -> dict:
    """The relearn_* columns of one model; the first mode is unprefixed, others ``relearn_<mode>_*``."""
    out = {}
    for i, (mode, by_model) in enumerate(results.items()):
        res, prefix = by_model[name], "relearn" if i == 0 else f"relearn_{mode}"
        _, ratio = delay_ratio(res, by_model[reference])
        out.update({f"{prefix}_delay": res.delay_text, f"{prefix}_censored": res.censored,
                    f"{prefix}_ratio_to_retrain": ratio, f"{prefix}_auc": res.auc, f"{prefix}_unit": res.unit})
    return out


@dataclass
class SeedPieces:
    """The pieces of one seed's comparison and the settings each depends on."""

    train: Piece
    strategies: dict[str, Piece]
    probes: dict[tuple[str, str], Piece]

    @classmethod
    def of(cls, cfg: ExperimentConfig, specs: list[StrategySpec], seed_dir: Path) -> SeedPieces:
        train = Piece(seed_dir / "train", training_settings(cfg))
        reference = Piece(seed_dir / "strategies" / specs[0].label,
                          strategy_settings(cfg, specs[0], train.fingerprint, ""))
        strategies = {specs[0].label: reference}
        for spec in specs[1:]:
            strategies[spec.label] = Piece(seed_dir / "strategies" / spec.label,
                                           strategy_settings(cfg, spec, train.fingerprint, reference.fingerprint))
        original = original_model(train.fingerprint, cfg)
        models = {"original": original, **{k: p.fingerprint for k, p in strategies.items()}}
        normalised = probe_metric(cfg) in task_of(cfg).normalised_probe_metrics
        by = reference.fingerprint if normalised else None
        probes = {(mode, name): Piece(seed_dir / "probe" / mode / name, probe_settings(cfg, mode, fp, original, by))
                  for mode in (cfg.probe.modes if cfg.probe.enabled else []) for name, fp in models.items()}
        return cls(train, strategies, probes)

    def clear_stale(self, seed_dir: Path, log=print) -> None:
        """Remove every result in ``seed_dir`` this experiment would not compute as it stands."""
        for piece in [self.train, *self.strategies.values(), *self.probes.values()]:
            piece.clear_if_stale(str(piece.path), log)
        kept = {p.path for p in [*self.strategies.values(), *self.probes.values()]}
        modes = {mode for mode, _ in self.probes}
        listed = [*(seed_dir / "strategies").glob("*"), *(seed_dir / "probe").glob("*/*")]
        listed += [p for p in (seed_dir / "probe").glob("*") if p.name.removesuffix(".csv") not in modes]
        for path in listed:
            if path.exists() and path not in kept:
                log(f"{path}: not part of this experiment any more; removing it")
                shutil.rmtree(path) if path.is_dir() else path.unlink()


def compare_seed(fed: Federation, cfg: ExperimentConfig, specs: list[StrategySpec], out: Path, rows: list[dict],
                 log=print) -> None:
    """Train (or resume) seed ``cfg.seed`` (client rules resolved), run every strategy, score and probe every model.

    Rows go into ``rows`` and the summary is rewritten after each strategy, so a failure loses
    nothing already done. The forget set and the scorer are built once here. A piece whose
    recorded settings match is reused.
    """
    seed_dir = out / f"seed-{cfg.seed}"
    pieces = SeedPieces.of(cfg, specs, seed_dir)
    scorer = task_of(cfg).scorer(cfg, federated_data(cfg.data, cfg.seed), cfg.forget_requests())
    log(f"[seed {cfg.seed}] training {cfg.train.rounds} rounds")
    trained = train_phase(fed, cfg, pieces.train.path, scorer, resume=True, log=log)
    original = scorer.summary_metrics(trained.weights)
    scorer.check_original(original)
    scorer.calibrate(trained.weights)  # class similarity under the original (MIA-NN)
    snapshot = load_snapshot(cfg, pieces.train.path, cfg.forget_requests()[0].round, scorer.initial_weights())
    seed_rows = [{"strategy": "original", "seed": cfg.seed, "from_scratch": False, **original}]
    models = {"original": trained.weights}
    reference, target = specs[0], None  # resolve_strategies puts the reference first
    for spec in specs:
        piece = pieces.strategies[spec.label]
        if piece.holds("result.json"):
            log(f"[seed {cfg.seed}] {spec.label}: already done with these settings, reusing {piece.path}")
            weights, _ = RunDir(piece.path).load_checkpoint()
            row = json.loads((piece.path / "result.json").read_text())
        else:
            log(f"[seed {cfg.seed}] {spec.label}")
            piece.claim(str(piece.path), log)
            outcome = run_strategy(fed, cfg, spec, snapshot, piece.path, scorer, target, log=log)
            weights, row = outcome.weights, outcome.row()
        models[spec.label] = weights
        metrics = scorer.summary_metrics(weights)
        if spec is reference:  # the recovery target: validation accuracy when there is a split
            target = metrics[scorer.selection_metric]
            if cfg.forgetting.check_separation:
                scorer.check_separation(probe_metric(cfg), trained.weights, weights)
        seed_rows.append({**row, "seed": cfg.seed, **metrics})
        write_summary(out, rows + seed_rows)
    estimate = estimate_settings(specs)
    if estimate is not None and estimate_applies(cfg):  # the original's row: a prediction made from θ̂
        log(f"[seed {cfg.seed}] influence estimate of {reference.label} (dual, a simulation-side oracle)")
        seed_rows[0].update(retrain_estimate(cfg, estimate, trained.weights, models[reference.label],
                                             {"test": (scorer.x_test, scorer.y_test),
                                              "forget": (scorer.x_forget, scorer.y_forget)}))
    elif estimate is not None:
        log(f"[seed {cfg.seed}] influence estimate skipped: it needs exactly one forget request, at the last "
            "training round")
    for r in seed_rows:
        r.update(scorer.evaluate(models[r["strategy"]], models[reference.label]))
    scorer.write_artifacts(models, seed_dir)
    if cfg.probe.enabled:
        log(f"[seed {cfg.seed}] relearning-delay probe ({probe_metric(cfg)}, modes {cfg.probe.modes})")
        masks = {"original": load_mask(pieces.train.path), **{k: load_mask(p.path) for k, p in pieces.strategies.items()}}
        results = probe_models(fed, cfg, scorer, trained.weights, models, log=log, cache=ProbeCache(pieces.probes),
                               reference=models[reference.label], masks=masks)
        write_probes(seed_dir, results)
        for r in seed_rows:
            r.update(probe_columns(results, r["strategy"], reference.label))
    forgotten = "; ".join(r.describe() for r in cfg.forget_requests())  # rules resolved on this seed's partition
    rows += [{**r, "forgotten": forgotten} for r in seed_rows]
    write_summary(out, rows)


def check_comparison(cfg: ExperimentConfig, seeds: int = 1) -> list[StrategySpec]:
    """What a comparison needs beyond a valid experiment: a request, seeds, valid parts."""
    if not cfg.forget:
        raise ConfigError("forget: the experiment has no [[forget]] request; add one, e.g. [[forget]] clients = [0]")
    if seeds < 1:
        raise ConfigError("--seeds: must be >= 1")
    for seed in range(cfg.seed, cfg.seed + seeds):  # each seed partitions anew: an index may fit one seed only
        check_forget_sets(cfg, seed)
    return check_parts(cfg)


def compare(fed: Federation, cfg: ExperimentConfig, out: str | Path, seeds: int = 1, log=print) -> list[dict]:
    """The comparison over ``seeds`` seeds (cfg.seed, cfg.seed + 1, ...), written to ``out``.

    Checks every part first (:func:`check_comparison`, as the CLI does), and writes the config.
    """
    specs = check_comparison(cfg, seeds)
    out = Path(out)
    seed_range = range(cfg.seed, cfg.seed + seeds)
    present = {int(d.name[5:]) for d in out.glob("seed-*") if d.name[5:].isdigit()}
    for s in sorted(present | set(seed_range)):  # before any work, so no seed keeps stale results
        SeedPieces.of(for_seed(cfg, s), specs, out / f"seed-{s}").clear_stale(out / f"seed-{s}", log)
    run = RunDir(out)
    if run.config.exists() and run.config.read_text() != to_toml(config_to_dict(cfg)):
        for derived in ("summary.csv", "summary.json", "report.md"):  # rewritten as the pieces complete
            (out / derived).unlink(missing_ok=True)
        shutil.rmtree(out / "plots", ignore_errors=True)
    run.write_config(cfg)
    rows: list[dict] = []
    for s in seed_range:
        compare_seed(fed, for_seed(cfg, s), specs, out, rows, log)
    return with_gaps(rows)
