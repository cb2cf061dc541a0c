"""The training phase: FedAvg rounds that record pseudo-gradients, checkpoint, and resume."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord

from fedunlearn.config import ExperimentConfig, config_to_dict
from fedunlearn.data import FederatedData, federated_data
from fedunlearn.federation import Federation
from fedunlearn.models import build_model
from fedunlearn.results import RunDir, read_csv
from fedunlearn.store import PseudoGradientStore
from fedunlearn.strategies import RecordingFedAvg
from fedunlearn.training import evaluate, get_weights, set_weights


def federation_spec(cfg: ExperimentConfig) -> str:
    """What a client needs to rebuild its data and model, as the JSON string clients cache on."""
    raw = config_to_dict(cfg)
    return json.dumps({"seed": cfg.seed, "data": raw["data"], "model": raw["model"]}, sort_keys=True)


def local_recipe(cfg: ExperimentConfig) -> dict:
    """The config every training client receives: federation spec and local SGD recipe."""
    t = cfg.train
    return {"federation": federation_spec(cfg), "behaviour": "train", "local-epochs": t.local_epochs,
            "batch-size": t.batch_size, "lr": t.lr, "momentum": t.momentum}


class GlobalEvaluator:
    """Server-side evaluation of weight lists on held-out data (one model, built once)."""

    def __init__(self, cfg: ExperimentConfig, data: FederatedData) -> None:
        self.data = data
        self.model = build_model(cfg.model, data.input_shape, data.num_classes, cfg.seed)

    def initial_weights(self) -> list[np.ndarray]:
        return get_weights(self.model)

    def accuracy_loss(self, weights: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        set_weights(self.model, weights)
        return evaluate(self.model, x, y)

    def test(self, weights: list[np.ndarray]) -> tuple[float, float]:
        return self.accuracy_loss(weights, self.data.x_test, self.data.y_test)


@dataclass
class TrainResult:
    """The trained global weights, the per-round table and the store."""

    weights: list[np.ndarray]
    rows: list[dict]
    store: PseudoGradientStore


def open_store(cfg: ExperimentConfig, run: RunDir, resume: bool) -> PseudoGradientStore:
    budget = int(cfg.store.ram_budget_mb * 2**20)
    if resume and (run.store / "store.json").exists():
        return PseudoGradientStore.load(run.store, budget)
    return PseudoGradientStore(run.store, cfg.store.history, budget, cfg.store.dtype)


def train_phase(fed: Federation, cfg: ExperimentConfig, out: str | Path, resume: bool = False,
                log=print) -> TrainResult:
    """Run ``cfg.train.rounds`` FedAvg rounds over every client, writing to the run folder ``out``.

    With ``resume`` and a checkpoint in ``out``, training continues after the checkpointed round;
    rounds.csv keeps the rows up to it. The result is the same as an uninterrupted run, because
    every random choice is seeded by (seed, round, client).
    """
    run = RunDir(out)
    data = federated_data(cfg.data, cfg.seed)
    evaluator = GlobalEvaluator(cfg, data)
    weights, start, rows = evaluator.initial_weights(), 0, []
    if resume and run.checkpoint.exists():
        weights, start = run.load_checkpoint()
        rows = [r for r in read_csv(run.rounds) if int(r["round"]) <= start] if run.rounds.exists() else []
        log(f"resuming {out} after round {start}")
    run.write_config(cfg)
    store = open_store(cfg, run, resume)
    t = cfg.train
    strategy = RecordingFedAvg(store, fed.node_of, range(cfg.data.num_clients), cfg.seed, local_recipe(cfg),
                               t.fraction_train, t.min_train_clients, t.server_lr)
    failures: list[str] = []
    arrays = ArrayRecord(weights)
    t0 = time.perf_counter()
    for rnd in range(start + 1, t.rounds + 1):
        arrays, _ = fed.train_round(strategy, arrays, rnd)
        weights = arrays.to_numpy_ndarrays()
        acc, loss = evaluator.test(weights)
        rep = strategy.report
        failures += [f"round {rnd}: {f}" for f in rep.failures]
        rows.append({"round": rnd, "test_acc": f"{acc:.6f}", "test_loss": f"{loss:.6f}",
                     "train_loss": f"{rep.train_loss:.6f}", "clients": len(rep.succeeded),
                     "failures": len(rep.failures), "wall_s": f"{time.perf_counter() - t0:.3f}"})
        if rnd % cfg.simulation.checkpoint_every == 0 or rnd == t.rounds:
            store.save()
            run.save_checkpoint(weights, rnd)
            run.write_rounds(rows)
            run.write_failures(failures)
        log(f"round {rnd}/{t.rounds}  test_acc={acc:.4f}  test_loss={loss:.4f}  "
            f"train_loss={rep.train_loss:.4f}  clients={len(rep.succeeded)}  failures={len(rep.failures)}")
    return TrainResult(weights, rows, store)
