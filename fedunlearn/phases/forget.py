"""The forget phase: one unlearning strategy's timeline from the pre-forget snapshot.

For each request (in round order) the strategy's unlearning step runs on the current model, then
recovery rounds over the remaining clients; between requests, and after the last one until
``train.rounds`` regular rounds have run in all, regular FedAvg rounds go on over the remaining
clients. Retrain ignores the timeline: FedAvg from the initial weights over the clients never
forgotten. Every round is evaluated (test and forget accuracy) and counted (rounds, client-epochs,
bytes, seconds).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord

from fedunlearn.config import ExperimentConfig, strategy_variant
from fedunlearn.data import federated_data
from fedunlearn.evaluation import Scorer
from fedunlearn.federation import Federation
from fedunlearn.io import atomic_write_text
from fedunlearn.results import RunDir, csv_text
from fedunlearn.store import PseudoGradientStore
from fedunlearn.strategies import (
    STRATEGIES,
    RecordingFedAvg,
    Unlearner,
    UnlearningContext,
    UnlearningError,
)
from fedunlearn.strategies.base import all_finite

Weights = list[np.ndarray]
TRAJECTORY_COLUMNS = ["strategy", "round", "phase", "test_acc", "forget_acc", "backdoor_asr"]


@dataclass
class Snapshot:
    """The federation when the first forget request arrives: model, round, latest Δs, history."""

    weights: Weights
    server_round: int
    store: PseudoGradientStore
    history: PseudoGradientStore
    init_weights: Weights


@dataclass
class Cost:
    """What a strategy spent: Flower rounds, client-epochs, bytes sent and received, seconds."""

    rounds: int = 0
    client_epochs: float = 0.0
    bytes_exchanged: int = 0
    wall_s: float = 0.0


@dataclass
class StrategyOutcome:
    """A strategy's final model, its per-round curve, cost, recovery time and notes."""

    name: str
    weights: Weights
    trajectory: list[dict]
    cost: Cost
    recovery_rounds: int | None = None
    recovery_censored: bool = False
    notes: dict = field(default_factory=dict)

    def row(self) -> dict:
        """The cost and recovery columns of this strategy's summary row."""
        return {"strategy": self.name, "recovery_rounds": "" if self.recovery_rounds is None else self.recovery_rounds,
                "recovery_censored": self.recovery_censored if self.recovery_rounds is not None else "",
                "rounds": self.cost.rounds, "client_epochs": self.cost.client_epochs,
                "bytes_exchanged": self.cost.bytes_exchanged, "wall_s": round(self.cost.wall_s, 3),
                "notes": "; ".join(f"{k}: {v}" for k, v in sorted(self.notes.items()))}


def load_snapshot(cfg: ExperimentConfig, train_dir: str | Path, server_round: int, init_weights: Weights) -> Snapshot:
    """The snapshot a training run saved at ``server_round`` (a forget request's round)."""
    run = RunDir(train_dir)
    budget = int(cfg.store.ram_budget_mb * 2**20)
    weights, rnd = run.load_checkpoint(run.snapshot(server_round))
    return Snapshot(weights, rnd, PseudoGradientStore.load(run.store, budget, tag=f"_round{rnd}"),
                    PseudoGradientStore.load(run.store, budget), init_weights)


def run_strategy(fed: Federation, cfg: ExperimentConfig, name: str, snapshot: Snapshot, out: str | Path,
                 retrain_test_acc: float | None = None, log=print) -> StrategyOutcome:
    """Run strategy ``name``'s whole timeline and write its trajectory, model and result to ``out``.

    ``retrain_test_acc`` is the recovery target of ``forgetting.recovery = "until-retrain"``;
    without it recovery runs a fixed ``forgetting.recovery_rounds`` rounds.
    """
    base, forgetting = strategy_variant(name, cfg.forgetting)
    cfg = dataclasses.replace(cfg, forgetting=forgetting)
    unlearner: Unlearner = STRATEGIES[base](forgetting)
    requests = cfg.forget_requests()
    forgotten_all = sorted(c for r in requests for c in r.clients)
    scorer = Scorer(cfg, federated_data(cfg.data, cfg.seed), forgotten_all)
    run = RunDir(out)
    store = PseudoGradientStore(run.store, cfg.store.history, int(cfg.store.ram_budget_mb * 2**20), cfg.store.dtype)
    store.copy_latest_from(snapshot.store)
    outcome = StrategyOutcome(name, snapshot.weights, [], Cost())  # a variant keeps its whole spec as name
    t0 = time.perf_counter()

    def run_round(strategy: RecordingFedAvg, weights: Weights, rnd: int, phase: str) -> Weights:
        arrays, _ = fed.train_round(strategy, ArrayRecord(weights), rnd)
        new = arrays.to_numpy_ndarrays()
        check_finite(unlearner, new, f"round {rnd} ({phase})")
        rep = strategy.report
        outcome.cost.rounds += 1
        outcome.cost.client_epochs += rep.client_epochs
        outcome.cost.bytes_exchanged += rep.bytes_exchanged
        m = scorer.round_metrics(new)
        outcome.trajectory.append({"strategy": name, "round": rnd, "phase": phase, **{k: m[k] for k in TRAJECTORY_COLUMNS[3:]}})
        log(f"  {name} round {rnd} [{phase}] test_acc={m['test_acc']:.4f} forget_acc={m['forget_acc']:.4f}"
            + ("" if math.isnan(m["backdoor_asr"]) else f" backdoor_asr={m['backdoor_asr']:.3f}"))
        return new

    def context(weights: Weights, clock: int, forgotten: list[int], gone: list[int]) -> UnlearningContext:
        remaining = [c for c in range(cfg.data.num_clients) if c not in gone]
        history = [(snapshot.history, snapshot.server_round), (store, 10**9)]
        return UnlearningContext(cfg, fed.node_of, weights, clock, store, history, forgotten, remaining,
                                 snapshot.init_weights, run_round, outcome.notes)

    if unlearner.from_scratch:
        weights = unlearner.unlearn(context(snapshot.init_weights, 0, forgotten_all, forgotten_all))
    else:
        weights, clock, gone, regular = snapshot.weights, snapshot.server_round, [], snapshot.server_round
        for req in requests:
            before = context(weights, clock, [], gone)
            weights = continue_regular(before, weights, req.round - regular)
            ctx = context(weights, before.clock, req.clients, gone + req.clients)
            weights = unlearner.unlearn(ctx)
            check_finite(unlearner, weights, "the unlearning step")
            if unlearner.recovers:
                weights = recover(ctx, unlearner, weights, scorer, retrain_test_acc, outcome)
            clock, gone, regular = ctx.clock, gone + req.clients, req.round
        ctx = context(weights, clock, [], gone)
        weights = continue_regular(ctx, weights, cfg.train.rounds - regular)
    outcome.weights = weights
    outcome.cost.wall_s = time.perf_counter() - t0
    write_outcome(run, outcome)
    return outcome


def continue_regular(ctx: UnlearningContext, weights: Weights, rounds: int) -> Weights:
    """``rounds`` regular FedAvg rounds over the remaining clients."""
    for _ in range(rounds):
        weights = ctx.next_round(ctx.fedavg(), weights, "regular")
    return weights


def recover(ctx: UnlearningContext, unlearner: Unlearner, weights: Weights, scorer: Scorer,
            target: float | None, outcome: StrategyOutcome) -> Weights:
    """Recovery rounds: until test accuracy reaches ``target`` (cap ``recovery_rounds``) or fixed."""
    f = ctx.cfg.forgetting
    until = f.recovery == "until-retrain" and target is not None
    if until:
        target -= f.recovery_tolerance
    done = 0
    while done < f.recovery_rounds and not (until and scorer.test(weights)[0] >= target):
        done += 1
        weights = ctx.next_round(unlearner.recovery_strategy(ctx, done), weights, "recover")
    outcome.recovery_rounds = (outcome.recovery_rounds or 0) + done
    outcome.recovery_censored = outcome.recovery_censored or (until and scorer.test(weights)[0] < target)
    return weights


def check_finite(unlearner: Unlearner, weights: Weights, where: str) -> None:
    if not all_finite(weights):
        size = unlearner.step_size()
        raise UnlearningError(f"{unlearner.name}: {where} left NaN or Inf in the weights"
                              + (f" at {size}; lower the step size" if size else ""))


def write_outcome(run: RunDir, outcome: StrategyOutcome) -> None:
    """Trajectory, final model and result of one strategy, each written atomically."""
    atomic_write_text(run.path / "trajectory.csv", csv_text(outcome.trajectory, TRAJECTORY_COLUMNS))
    run.save_checkpoint(outcome.weights, outcome.trajectory[-1]["round"] if outcome.trajectory else 0)
    atomic_write_text(run.path / "result.json", json.dumps(outcome.row(), indent=1))
