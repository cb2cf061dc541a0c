"""What every unlearning strategy is given (:class:`UnlearningContext`) and must provide
(:class:`Unlearner`), and the base of the add-ons that wrap any strategy (:class:`UnlearnerWrapper`).

An unlearner turns the global model at a forget request into a model without the forgotten
clients' influence, running whatever Flower rounds it needs through ``ctx.next_round`` (which the
forget phase wires to the federation, with cost accounting and a NaN/Inf check). Recovery rounds
after the step are the phase's business; an unlearner only says whether it wants them and with
which strategy. Its settings are a dataclass named by the class attribute ``Settings``, built and
validated from the experiment's table named after it (``[forgetting.puf] eta = 20``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedunlearn.arrays import Weights
from fedunlearn.config import REQUEST_KINDS, ExperimentConfig, ForgetRequest
from fedunlearn.store import PseudoGradient, PseudoGradientStore
from fedunlearn.strategies.fedavg import RecordingFedAvg


class UnlearningError(RuntimeError):
    """An unlearning step left weights that cannot be used (NaN or Inf), or lacks what it needs."""


@dataclass
class UnlearningContext:
    """The state of the federation when a forget request arrives.

    Attributes
    ----------
    cfg
        The experiment.
    node_of
        Partition id -> node id in the running simulation.
    weights
        The global model when the request arrives.
    clock
        Number of the last round run so far (rounds are numbered on one clock; client seeds
        depend on it).
    store
        Latest pseudo-gradient of every client as of the request; also records new rounds.
    history
        (store, last round) pairs whose history covers this timeline's past rounds; rounds after a
        store's last round belong to another timeline and are not used (FedEraser).
    request
        The forget request being served (None for rounds outside a request, and from scratch).
    removed
        Every request whose data is gone once this one is served (the earlier ones and this one):
        clients train without their samples.
    forgotten
        The clients holding this request's forget data (for a client request: its clients).
    remaining
        The clients with data left in the federation after it.
    init_weights
        The initial global model of the training run.
    run_round
        ``(strategy, weights, round, phase) -> weights``: one Flower round, supplied by the phase.
    similarity_of
        ``weights -> S``: the class similarity of a model on the test set's calibration half
        (docs/methods.md, "Class unlearning"), supplied by the phase.
    notes
        Facts a strategy reports into the results (e.g. which pseudo-gradient PUF used).
    """

    cfg: ExperimentConfig
    node_of: dict[int, int]
    weights: Weights
    clock: int
    store: PseudoGradientStore
    history: Sequence[tuple[PseudoGradientStore, int]]
    request: ForgetRequest | None
    removed: list[ForgetRequest]
    forgotten: list[int]
    remaining: list[int]
    init_weights: Weights
    run_round: Callable[[RecordingFedAvg, Weights, int, str], Weights]
    similarity_of: Callable[[Weights], np.ndarray]
    notes: dict = field(default_factory=dict)

    def next_round(self, strategy: RecordingFedAvg, weights: Weights, phase: str) -> Weights:
        """Run one round of ``strategy`` from ``weights`` on the next tick of the clock."""
        self.clock += 1
        return self.run_round(strategy, weights, self.clock, phase)

    def fedavg(self, participants: Sequence[int] | None = None) -> RecordingFedAvg:
        """Plain FedAvg with the experiment's recipe over ``participants`` (default: the remaining)."""
        return RecordingFedAvg.from_config(self.cfg, self.store, self.node_of,
                                           self.remaining if participants is None else participants, self.removed)

    @property
    def kind(self) -> str:
        """The kind of the request being served (``client``, ``samples``, ``class``)."""
        return self.request.kind if self.request is not None else "client"

    @property
    def earlier(self) -> list[ForgetRequest]:
        """The requests served before this one (their data is already gone)."""
        return [r for r in self.removed if r is not self.request]

    @contextmanager
    def rounds_wrapped(self, wrap: Callable[[Any], Any]) -> Iterator[None]:
        """Inside the block, every round runs ``wrap(strategy)`` instead of ``strategy`` (wrappers' hook)."""
        run_round = self.run_round
        self.run_round = lambda strategy, weights, rnd, phase: run_round(wrap(strategy), weights, rnd, phase)
        try:
            yield
        finally:
            self.run_round = run_round

    def history_rounds(self, partition_id: int) -> list[int]:
        """Every round with a stored pseudo-gradient of ``partition_id``, over all history stores."""
        return sorted({r for s, last in self.history for r in s.history_rounds(partition_id) if r <= last})

    def history_get(self, partition_id: int, server_round: int) -> PseudoGradient:
        for s, last in self.history:
            if server_round <= last and server_round in s.history_rounds(partition_id):
                return s.get(partition_id, server_round)
        raise KeyError(f"no history for client {partition_id} in round {server_round}")


class Unlearner:
    """Base of every unlearning strategy.

    Class attributes say how the forget phase treats it: ``recovers`` (recovery rounds follow the
    unlearning step), ``from_scratch`` (it ignores the pre-forget model and the request timeline:
    the exact reference every metric is scored against, e.g. retrain), ``needs_history`` (it
    reads past rounds' pseudo-gradients), ``step_settings`` (the settings that scale its step,
    named when a step leaves NaN or Inf in the weights), ``kinds`` (the request kinds it serves;
    an experiment with another kind is refused before any training). :meth:`first_order_step`
    says whether its unlearning rounds move the model by a step built from the holders' fresh
    updates (which feasible-update masking can mask), :meth:`refuses` whether it can run in an
    experiment at all.

    Parameters
    ----------
    settings
        An instance of the class attribute ``Settings`` (None: the strategy takes no settings).
    """

    needs_classifier = False  # True: refused on a task without labels (fedunlearn.tasks)

    Settings: type | None = None
    recovers = True
    from_scratch = False
    needs_history = False
    step_settings: tuple[str, ...] = ()
    kinds: tuple[str, ...] = REQUEST_KINDS

    def __init__(self, settings: Any = None) -> None:
        self.settings = settings

    def serves(self, kind: str) -> str:
        """Why this unlearner cannot serve a request of ``kind`` ("" when it can)."""
        return "" if kind in self.kinds else f"serves {', '.join(self.kinds)} requests only"

    @property
    def min_recovery_rounds(self) -> int:
        """Recovery rounds that run whatever the accuracy (0: recovery may stop at once)."""
        return 0

    def refuses(self, cfg: ExperimentConfig) -> str:
        """Why this unlearner cannot run in experiment ``cfg`` ("" when it can); asked before any training.

        A setting that is wrong for this experiment may instead raise ConfigError naming itself.
        """
        return ""

    def first_order_step(self) -> bool:
        """Whether its unlearning rounds apply a first-order step from fresh forget updates (maskable)."""
        return False

    def step_size(self) -> dict[str, Any]:
        """The settings that scale the unlearning step, by name, with their values."""
        return {key: getattr(self.settings, key) for key in self.step_settings}

    def unlearn(self, ctx: UnlearningContext) -> Weights:
        raise NotImplementedError

    def recovery_strategy(self, ctx: UnlearningContext, recovery_round: int) -> RecordingFedAvg:
        """The strategy of recovery round ``recovery_round`` (1-based): FedAvg over the remaining."""
        return ctx.fedavg()


class UnlearnerWrapper(Unlearner):
    """An add-on around any unlearner (IEU, ...): by default it changes nothing of ``inner``.

    Subclasses override :meth:`unlearn` or :meth:`recovery_strategy` and call the inner one, the
    way Flower's ``DifferentialPrivacyServerSideFixedClipping`` wraps an inner strategy.
    """

    def __init__(self, inner: Unlearner, settings: Any = None) -> None:
        super().__init__(settings)
        self.inner = inner
        self.recovers, self.from_scratch, self.needs_history = inner.recovers, inner.from_scratch, inner.needs_history

    def step_size(self) -> dict[str, Any]:
        return {**self.inner.step_size(), **super().step_size()}

    def serves(self, kind: str) -> str:
        return self.inner.serves(kind) or super().serves(kind)

    def refuses(self, cfg: ExperimentConfig) -> str:
        return self.inner.refuses(cfg)

    @property
    def min_recovery_rounds(self) -> int:
        return self.inner.min_recovery_rounds

    def first_order_step(self) -> bool:
        return self.inner.first_order_step()

    def unlearn(self, ctx: UnlearningContext) -> Weights:
        return self.inner.unlearn(ctx)

    def recovery_strategy(self, ctx: UnlearningContext, recovery_round: int):
        return self.inner.recovery_strategy(ctx, recovery_round)
