"""The training phase: FedAvg rounds that record pseudo-gradients, checkpoint, and resume."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from flwr.app import ArrayRecord

from fedunlearn.arrays import Weights
from fedunlearn.config import ExperimentConfig
from fedunlearn.evaluation import Scorer
from fedunlearn.flower.runtime import Federation
from fedunlearn.results import RunDir, read_csv
from fedunlearn.store import PseudoGradientStore
from fedunlearn.strategies import RecordingFedAvg


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


def train_phase(fed: Federation, cfg: ExperimentConfig, out: str | Path, scorer: Scorer, resume: bool = False,
                log=print) -> TrainResult:
    """Run ``cfg.train.rounds`` FedAvg rounds over every client, writing to the run folder ``out``.

    With ``resume`` and a checkpoint in ``out``, training continues after the checkpointed round;
    rounds.csv keeps the rows up to it. The result is the same as an uninterrupted run, because
    every random choice is seeded by (seed, round, client). ``scorer`` evaluates every round (its
    forget set is the experiment's forgotten clients).
    """
    run = RunDir(out)
    weights, start, rows = scorer.initial_weights(), 0, []
    if resume and run.checkpoint.exists():
        weights, start = run.load_checkpoint()
        rows = [r for r in read_csv(run.rounds) if int(r["round"]) <= start] if run.rounds.exists() else []
        log(f"resuming {out} after round {start}")
    run.write_config(cfg)
    store = open_store(cfg, run, resume)
    t = cfg.train
    strategy = RecordingFedAvg.from_config(cfg, store, fed.node_of, range(cfg.data.num_clients))
    failures: list[str] = []
    snapshot_rounds = {r.round for r in cfg.forget_requests()[:1]}
    arrays = ArrayRecord(weights)
    t0 = time.perf_counter()
    for rnd in range(start + 1, t.rounds + 1):
        arrays, _ = fed.train_round(strategy, arrays, rnd)
        weights = arrays.to_numpy_ndarrays()
        m = scorer.round_metrics(weights)
        acc, loss = m["test_acc"], m["test_loss"]
        rep = strategy.report
        failures += [f"round {rnd}: {f}" for f in rep.failures]
        rows.append({"round": rnd, "test_acc": f"{acc:.6f}", "test_loss": f"{loss:.6f}",
                     "forget_acc": f"{m['forget_acc']:.6f}", "backdoor_asr": f"{m['backdoor_asr']:.6f}",
                     "train_loss": f"{rep.train_loss:.6f}", "clients": len(rep.succeeded),
                     "failures": len(rep.failures), "wall_s": f"{time.perf_counter() - t0:.3f}"})
        if rnd in snapshot_rounds:  # the model and latest Δs a forget request starts from
            store.save(tag=f"_round{rnd}")
            run.save_checkpoint(weights, rnd, run.snapshot(rnd))
        if rnd % cfg.simulation.checkpoint_every == 0 or rnd == t.rounds:
            store.save()
            run.save_checkpoint(weights, rnd)
            run.write_rounds(rows)
            run.write_failures(failures)
        log(f"round {rnd}/{t.rounds}  test_acc={acc:.4f}  test_loss={loss:.4f}  "
            f"train_loss={rep.train_loss:.4f}  clients={len(rep.succeeded)}  failures={len(rep.failures)}")
    return TrainResult(weights, rows, store)
