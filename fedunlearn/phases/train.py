"""The training phase: FedAvg rounds that record pseudo-gradients, checkpoint, and resume."""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from flwr.app import ArrayRecord

from fedunlearn.arrays import Weights, all_finite
from fedunlearn.config import ConfigError, ExperimentConfig
from fedunlearn.data import federated_data
from fedunlearn.dilution import Schedule
from fedunlearn.evaluation.scorer import EvaluationSets
from fedunlearn.flower.runtime import Federation
from fedunlearn.provenance import Piece, training_settings
from fedunlearn.report.federation import draw_label_distribution
from fedunlearn.results import RunDir, read_csv
from fedunlearn.store import PseudoGradientStore
from fedunlearn.strategies import RecordingFedAvg
from fedunlearn.strategies.dilution import diluted


@dataclass
class TrainResult:
    """The trained global weights, the per-round table and the store."""

    weights: Weights
    rows: list[dict]
    store: PseudoGradientStore


def open_store(cfg: ExperimentConfig, run: RunDir, resume: bool) -> PseudoGradientStore:
    budget = int(cfg.store.ram_budget_mb * 2**20)
    if resume and (run.store / "store.json").exists():
        return PseudoGradientStore.load(run.store, budget)
    return PseudoGradientStore(run.store, cfg.store.history, budget, cfg.store.dtype)


def label_distribution_title(cfg: ExperimentConfig) -> str:
    return (f"Training samples per client and class ({cfg.data.name}, {cfg.data.num_clients} clients, "
            f"partition {cfg.data.partition}, seed {cfg.seed})")


def train_phase(fed: Federation, cfg: ExperimentConfig, out: str | Path, scorer: EvaluationSets, resume: bool = False,
                log=print) -> TrainResult:
    """Run ``cfg.train.rounds`` FedAvg rounds over every client, writing to the run folder ``out``.

    With ``resume`` and a checkpoint in ``out`` computed with the same settings (its
    :mod:`~fedunlearn.provenance` record; ``train.rounds`` may have grown), training continues
    after the checkpointed round; rounds.csv keeps the rows up to it. The result is the same as an
    uninterrupted run, because every random choice is seeded by (seed, round, client). A folder
    computed with other settings is cleared and trained again, saying so. ``scorer`` evaluates
    every round (its forget set is the experiment's forgotten clients). A round that leaves NaN or
    Inf in the weights or the loss stops training with ConfigError naming the learning rates. A
    diluted model's mask (:mod:`fedunlearn.dilution`) holds in every round once it exists and is
    saved in ``out`` (late: made after round ``train.rounds − finetune_rounds``).
    """
    run = RunDir(out)
    piece = Piece(run.path, training_settings(cfg))
    weights, start, rows = scorer.initial_weights(), 0, []
    if piece.claim(str(out), log) and resume and run.checkpoint.exists():
        weights, start = run.load_checkpoint()
        if start > cfg.train.rounds:
            log(f"{out}: trained for {start} rounds, more than train.rounds = {cfg.train.rounds}; training again")
            shutil.rmtree(run.path)
            piece.claim(str(out), log)
            weights, start = scorer.initial_weights(), 0
        else:
            rows = [r for r in read_csv(run.rounds) if int(r["round"]) <= start] if run.rounds.exists() else []
            log(f"resuming {out} after round {start}")
    run.write_config(cfg)
    if start == 0 or not run.label_distribution.exists():
        draw_label_distribution(federated_data(cfg.data, cfg.seed), cfg.forgotten_clients(),
                                run.label_distribution, label_distribution_title(cfg))
    store = open_store(cfg, run, resume and start > 0)
    t = cfg.train
    strategy = RecordingFedAvg.from_config(cfg, store, fed.node_of, range(cfg.data.num_clients))
    dilution = Schedule.for_training(cfg, run.path, weights, start, log)  # the mask, saved in the run folder
    snapshot_rounds = {r.round for r in cfg.forget_requests()[:1]}
    arrays = ArrayRecord(weights)
    t0 = time.perf_counter()
    for rnd in range(start + 1, t.rounds + 1):
        arrays, _ = fed.train_round(diluted(strategy, dilution.mask), arrays, rnd, stage="training")
        weights = dilution.after_round(arrays.to_numpy_ndarrays(), rnd)  # late: pruned after its round
        arrays = ArrayRecord(weights)
        rep = strategy.report
        if not (all_finite(weights) and math.isfinite(rep.train_loss)):
            what = "weights" if math.isfinite(rep.train_loss) else "clients' training loss"
            raise ConfigError(f"train.lr: training round {rnd} left NaN or Inf in the {what} "
                              f"(train.lr = {t.lr:g}, train.server_lr = {t.server_lr:g}, train.momentum = "
                              f"{t.momentum:g}); lower train.lr (or train.server_lr) so training does not diverge")
        m = scorer.round_metrics(weights)
        rows.append({"round": rnd, **{k: f"{m[k]:.6f}" for k in scorer.round_columns},
                     "train_loss": f"{rep.train_loss:.6f}", "clients": len(rep.succeeded),
                     "failures": len(rep.failures), "wall_s": f"{time.perf_counter() - t0:.3f}"})
        if rnd in snapshot_rounds:  # the model and latest Δs a forget request starts from
            store.save(tag=f"_round{rnd}")
            run.save_checkpoint(weights, rnd, run.snapshot(rnd))
        if rnd % cfg.simulation.checkpoint_every == 0 or rnd == t.rounds:
            store.save()
            run.save_checkpoint(weights, rnd)
            run.write_rounds(rows, scorer.round_columns)
        log(f"round {rnd}/{t.rounds}  {scorer.round_line(m)}  "
            f"train_loss={rep.train_loss:.4f}  clients={len(rep.succeeded)}  failures={len(rep.failures)}")
    return TrainResult(weights, rows, store)
