"""The forget phase: one unlearning strategy's timeline from the pre-forget snapshot.

For each request (in round order) the strategy's unlearning step runs on the current model, then
recovery rounds over the remaining clients; between requests, and after the last one until
``train.rounds`` regular rounds have run in all, regular FedAvg rounds go on over the remaining
clients. A strategy from scratch (retrain) ignores the timeline: FedAvg from the initial weights
over the clients never forgotten. :class:`Timeline` runs every round through one runner that
evaluates it (test and forget accuracy), counts it (rounds, client-epochs, bytes, seconds) and
stops on NaN or Inf.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from flwr.app import ArrayRecord
from flwr.serverapp.strategy import Strategy

from fedunlearn.arrays import Weights, all_finite
from fedunlearn.class_unlearning import split_filter, with_filter
from fedunlearn.config import (
    ConfigError,
    ExperimentConfig,
    ForgetRequest,
    load_config,
    validate_requests,
)
from fedunlearn.data import federated_data
from fedunlearn.data.forget_sets import ForgetSets
from fedunlearn.dilution import Mask, Schedule, run_mask, save_mask
from fedunlearn.evaluation.scorer import EvaluationSets
from fedunlearn.flower.runtime import Federation
from fedunlearn.io import atomic_write_text
from fedunlearn.parts import check_parts, resolved
from fedunlearn.results import RunDir, csv_text
from fedunlearn.store import PseudoGradientStore
from fedunlearn.strategies import StrategySpec, UnlearningContext, UnlearningError
from fedunlearn.strategies.dilution import diluted
from fedunlearn.tasks import task_of

TRAJECTORY_COLUMNS = ["strategy", "round", "phase"]  # then the task's round metrics


@dataclass
class Snapshot:
    """The federation when the first forget request arrives: model, round, latest Δs, history, dilution mask."""

    weights: Weights
    server_round: int
    store: PseudoGradientStore
    history: PseudoGradientStore
    init_weights: Weights
    mask: Mask | None = None


@dataclass
class Cost:
    """What a strategy spent: Flower rounds, client-epochs, bytes sent and received, seconds."""

    rounds: int = 0
    client_epochs: float = 0.0
    bytes_exchanged: int = 0
    wall_s: float = 0.0


@dataclass
class StrategyOutcome:
    """A strategy's final model (``name``: its label, ``spec``: the entry in full), curve, cost, recovery and notes."""

    name: str
    weights: Weights
    trajectory: list[dict]
    cost: Cost
    from_scratch: bool = False
    spec: str = ""
    recovery_rounds: int | None = None
    recovery_censored: bool = False
    notes: dict = field(default_factory=dict)

    def row(self) -> dict:
        """The cost and recovery columns of this strategy's summary row."""
        return {"strategy": self.name, "spec": self.spec or self.name, "from_scratch": self.from_scratch,
                "recovery_rounds": "" if self.recovery_rounds is None else self.recovery_rounds,
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
                    PseudoGradientStore.load(run.store, budget), init_weights, run_mask(cfg, run.path))


class Timeline:
    """One strategy's rounds from the snapshot: regular rounds, unlearning steps, recovery.

    Parameters
    ----------
    fed, cfg, spec
        The running federation, the experiment, and the strategy to run.
    snapshot
        Where the timeline starts (and the history it may read).
    scorer
        Evaluates every round (built once per seed by the caller).
    store
        Records the pseudo-gradients of this timeline's rounds.
    retrain_test_acc
        The recovery target of ``forgetting.recovery = "until-retrain"``: the reference's
        ``scorer.selection_metric`` (validation accuracy when ``data.validation`` holds a split out,
        else test accuracy); without it recovery runs a fixed ``forgetting.recovery_rounds`` rounds.
    """

    def __init__(self, fed: Federation, cfg: ExperimentConfig, spec: StrategySpec, snapshot: Snapshot,
                 scorer: EvaluationSets, store: PseudoGradientStore, retrain_test_acc: float | None = None, log=print) -> None:
        self.fed, self.cfg, self.spec, self.snapshot, self.scorer = fed, cfg, spec, snapshot, scorer
        self.store, self.target, self.log = store, retrain_test_acc, log
        self.unlearner = spec.build()
        # the training run's mask; from scratch, its own (late: made by magnitude after its pruning round)
        self.dilution = Schedule(cfg, snapshot.init_weights, None if spec.from_scratch else snapshot.mask, log=log)
        self.outcome = StrategyOutcome(spec.label, snapshot.weights, [], Cost(), from_scratch=spec.from_scratch,
                                       spec=spec.spec)
        store.copy_latest_from(snapshot.store)

    # -- the one round runner --------------------------------------------------------------
    def run_round(self, strategy: Strategy, weights: Weights, rnd: int, phase: str) -> Weights:
        """One Flower round of ``strategy``, evaluated, counted and checked for NaN/Inf.

        Clients train the network; a server-side output filter (docs/methods.md, "Class
        unlearning") stays on the model across the round. A dilution mask holds on the network.
        """
        network, output_filter = split_filter(weights, self.scorer.num_arrays)
        arrays, _ = self.fed.train_round(diluted(strategy, self.dilution.mask), ArrayRecord(network), rnd,
                                         stage=self.spec.label)
        new = with_filter(self.dilution.after_round(arrays.to_numpy_ndarrays(), rnd), output_filter)
        self.check_finite(new, f"round {rnd} ({phase})")
        rep, cost = strategy.report, self.outcome.cost
        cost.rounds += 1
        cost.client_epochs += rep.client_epochs
        cost.bytes_exchanged += rep.bytes_exchanged
        m = self.scorer.round_metrics(new)
        self.outcome.trajectory.append({"strategy": self.spec.label, "round": rnd, "phase": phase,
                                        **{k: m[k] for k in self.scorer.round_columns}})
        self.log(f"  {self.spec.label} round {rnd} [{phase}] {self.scorer.round_line(m)}")
        return new

    def check_finite(self, weights: Weights, where: str) -> None:
        if not all_finite(weights):
            size = self.spec.describe_step(self.unlearner)
            raise UnlearningError(f"{self.spec.label}: {where} left NaN or Inf in the weights"
                                  + (f" at {size}; lower the step size" if size else ""))

    def context(self, weights: Weights, clock: int, request: ForgetRequest | None,
                removed: list[ForgetRequest]) -> UnlearningContext:
        """The context of serving ``request`` (None: regular rounds) once ``removed`` are gone."""
        sets = ForgetSets.of(self.scorer.data, removed, self.cfg.seed)
        holders = sets.holders[-1] if request is not None else []
        history = [(self.snapshot.history, self.snapshot.server_round), (self.store, 10**9)]
        return UnlearningContext(self.cfg, self.fed.node_of, weights, clock, self.store, history, request, removed,
                                 holders, sets.remaining_clients(self.scorer.data), self.snapshot.init_weights,
                                 self.run_round, self.scorer.similarity_of, self.outcome.notes)

    # -- the phases of a timeline ----------------------------------------------------------
    def regular(self, ctx: UnlearningContext, weights: Weights, rounds: int) -> Weights:
        """``rounds`` regular FedAvg rounds over the remaining clients."""
        for _ in range(rounds):
            weights = ctx.next_round(ctx.fedavg(), weights, "regular")
        return weights

    def recover(self, ctx: UnlearningContext, weights: Weights) -> Weights:
        """Recovery rounds: until accuracy reaches the target (cap ``recovery_rounds``) or fixed.

        The accuracy is the scorer's selection metric: validation accuracy when the experiment
        holds a validation split out, else test accuracy (docs/methods.md, "Recovery"). The first
        ``min_recovery_rounds`` rounds of an unlearner that declares them (client-side IEU) run
        whatever the accuracy.
        """
        f, outcome = self.cfg.forgetting, self.outcome
        until = f.recovery == "until-retrain" and self.target is not None
        target = self.target - f.recovery_tolerance if until else 0.0
        forced = self.unlearner.min_recovery_rounds

        def reached(w: Weights) -> bool:
            return until and self.scorer.selection_score(w) >= target

        done = 0
        while done < f.recovery_rounds and (done < forced or not reached(weights)):
            done += 1
            weights = ctx.next_round(self.unlearner.recovery_strategy(ctx, done), weights, "recover")
        outcome.recovery_rounds = (outcome.recovery_rounds or 0) + done
        outcome.recovery_censored = outcome.recovery_censored or (until and not reached(weights))
        return weights

    def run(self) -> StrategyOutcome:
        t0 = time.perf_counter()
        requests, snap = self.cfg.forget_requests(), self.snapshot
        if self.spec.from_scratch:
            weights = self.unlearner.unlearn(self.context(snap.init_weights, 0, None, requests))
        else:
            weights, clock, removed, regular = snap.weights, snap.server_round, [], snap.server_round
            for req in requests:
                before = self.context(weights, clock, None, removed)
                weights = self.regular(before, weights, req.round - regular)
                ctx = self.context(weights, before.clock, req, removed + [req])
                weights = self.unlearner.unlearn(ctx)
                self.check_finite(weights, "the unlearning step")
                # a step made on the server (IEU's noise, NoT, FedRecovery, influence) keeps the dilution mask too
                network, output_filter = split_filter(weights, self.scorer.num_arrays)
                weights = with_filter(self.dilution.enforce(network), output_filter)
                if self.unlearner.recovers:
                    weights = self.recover(ctx, weights)
                clock, removed, regular = ctx.clock, removed + [req], req.round
            weights = self.regular(self.context(weights, clock, None, removed), weights,
                                   self.cfg.train.rounds - regular)
        self.outcome.weights = weights
        self.outcome.cost.wall_s = time.perf_counter() - t0
        return self.outcome


def run_strategy(fed: Federation, cfg: ExperimentConfig, spec: StrategySpec, snapshot: Snapshot, out: str | Path,
                 scorer: EvaluationSets, retrain_test_acc: float | None = None, log=print) -> StrategyOutcome:
    """Run ``spec``'s whole timeline and write its trajectory, model and result to ``out``."""
    run = RunDir(out)
    store = PseudoGradientStore(run.store, cfg.store.history, int(cfg.store.ram_budget_mb * 2**20), cfg.store.dtype)
    timeline = Timeline(fed, cfg, spec, snapshot, scorer, store, retrain_test_acc, log)
    outcome = timeline.run()
    if timeline.dilution.mask is not None:  # beside the model, before result.json marks it done (the probe reads it)
        save_mask(run.path, timeline.dilution.mask)
    write_outcome(run, outcome, scorer.round_columns)
    return outcome


def write_outcome(run: RunDir, outcome: StrategyOutcome, round_columns: list[str]) -> None:
    """Trajectory (its columns: the timeline's and the task's ``round_columns``), final model and result
    of one strategy, each written atomically."""
    atomic_write_text(run.path / "trajectory.csv", csv_text(outcome.trajectory, TRAJECTORY_COLUMNS + round_columns))
    run.save_checkpoint(outcome.weights, outcome.trajectory[-1]["round"] if outcome.trajectory else 0)
    atomic_write_text(run.path / "result.json", json.dumps(outcome.row(), indent=1))


@dataclass
class ForgetJob:
    """``fedunlearn forget``: a trained run, a request after its last round, and one strategy."""

    cfg: ExperimentConfig
    spec: StrategySpec
    snapshot: Snapshot
    scorer: EvaluationSets

    def run(self, fed: Federation, out: Path, log=print) -> list[dict]:
        """The strategy's timeline; rows ``original`` and the strategy, with their metrics.

        ``out/config.toml`` gets the experiment as this job runs it (the request, the strategy's
        settings, fixed recovery), so the folder says what its results were computed with.
        """
        RunDir(out).write_config(resolved(self.cfg))
        outcome = run_strategy(fed, self.cfg, self.spec, self.snapshot, out / "strategies" / self.spec.label,
                               self.scorer, log=log)
        common = {"seed": self.cfg.seed, "forgotten": self.cfg.forget[0].describe()}  # as a comparison's rows
        return [{"strategy": "original", **common, **self.scorer.summary_metrics(self.snapshot.weights)},
                {**outcome.row(), **common, **self.scorer.summary_metrics(outcome.weights)}]


def prepare_forget(run_dir: str | Path, request: ForgetRequest, strategy: str, recovery_rounds: int | None,
                   overrides: list[str]) -> ForgetJob:
    """Check a forget request against a trained run and build what its timeline starts from.

    Only ``forgetting.*`` settings may change: the federation is the trained run's. Recovery runs a
    fixed number of rounds (there is no retrained reference to recover towards).
    """
    run = RunDir.trained(run_dir)
    bad = [o for o in overrides if not o.startswith("forgetting.")]
    if bad:
        raise ConfigError(f"--set {bad[0]}: forget only takes forgetting.* overrides; the federation is the trained run's")
    cfg = load_config(run.config, overrides)
    weights, last_round = run.load_checkpoint()
    request = dataclasses.replace(request, round=last_round)
    validate_requests([request], cfg.data.num_clients, last_round, f"--{request.kind}")
    if recovery_rounds is not None and recovery_rounds < 0:
        raise ConfigError("--recovery-rounds: must be >= 0")
    forgetting = dataclasses.replace(cfg.forgetting, strategies=[strategy], recovery="fixed",
                                     recovery_rounds=cfg.forgetting.recovery_rounds if recovery_rounds is None
                                     else recovery_rounds)
    cfg = dataclasses.replace(cfg, forget=[request], forgetting=forgetting,
                              train=dataclasses.replace(cfg.train, rounds=last_round))
    try:
        spec = next(s for s in check_parts(cfg) if s.label == strategy)
    except ConfigError as err:
        raise ConfigError(str(err).replace("forgetting.strategies:", "--strategy:", 1)
                          .replace("set store.history = true", "train with --set store.history=true")) from None
    scorer = task_of(cfg).scorer(cfg, federated_data(cfg.data, cfg.seed), [request])
    store = PseudoGradientStore.load(run.store, int(cfg.store.ram_budget_mb * 2**20))
    snapshot = Snapshot(weights, last_round, store, store, scorer.initial_weights(), run_mask(cfg, run.path))
    return ForgetJob(cfg, spec, snapshot, scorer)
