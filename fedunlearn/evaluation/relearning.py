"""The relearning-delay probe on any Flower grid (docs/methods.md, "Relearning delay").

:func:`relearning_probe` drives a strategy that re-admits the forgotten clients with Flower's own
``Strategy.start`` and reads the forget metric before the first round and after each one, through
``start``'s ``evaluate_fn``. fedunlearn's probe phase calls it with a metric computed on the server;
a ServerApp whose server holds no data measures the metric where the data lives, on the forgotten
clients' nodes, with :func:`evaluate_on_nodes` (Flower ``evaluate`` messages to their ClientApp).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedunlearn.arrays import all_finite
from fedunlearn.evaluation.probe import ProbeResult


class ProbeDivergedError(RuntimeError):
    """Relearning left NaN or Inf in the weights after ``rounds`` (in ``unit``): a diverged model's metric
    would never reach τ and read as the longest delay, so the probe stops instead."""

    def __init__(self, rounds: int, unit: str = "rounds") -> None:
        super().__init__(f"relearning left NaN or Inf in the weights after {rounds} {unit}")
        self.rounds, self.unit = rounds, unit


def relearning_probe(grid: Grid, strategy: Strategy, arrays: ArrayRecord, forget_metric: Callable[[ArrayRecord], float],
                     *, metric: str, tau: float, max_rounds: int, timeout: float = 3600.0,
                     train_config: ConfigRecord | None = None, unit: str = "rounds") -> ProbeResult:
    """Run ``max_rounds`` rounds of ``strategy`` from ``arrays`` and record the forget metric.

    Parameters
    ----------
    grid
        The ServerApp's grid.
    strategy
        A strategy whose participants include the forgotten clients (e.g. a
        :class:`~fedunlearn.strategies.RecordingFedAvg` over every node, with its own store).
    arrays
        The model to probe (an unlearnt model, retrain's, the original...).
    forget_metric
        The metric on the forget data of a model: e.g. ``lambda a: evaluate_on_nodes(grid, a, [node],
        "eval-acc")``.
    metric, tau
        The metric's name (``forget_loss`` counts as relearnt when at or below τ, any other name at
        or above) and the threshold τ (:func:`fedunlearn.evaluation.probe.threshold`).
    max_rounds, timeout, train_config
        As in ``Strategy.start``.
    unit
        What one round is, as the result names it (``"steps"`` when each round is one SGD step).

    Returns
    -------
    ProbeResult
        The curve (index 0 before any round), the threshold and the delay in ``unit``.

    Raises
    ------
    ProbeDivergedError
        When a round leaves NaN or Inf in the weights (lower the learning rate it relearns with).
    """
    curve: list[float] = []

    def evaluate_fn(server_round: int, current: ArrayRecord) -> MetricRecord:
        if not all_finite(current.to_numpy_ndarrays()):
            raise ProbeDivergedError(server_round, unit)
        curve.append(float(forget_metric(current)))
        return MetricRecord({metric: curve[-1]})

    strategy.start(grid, arrays, num_rounds=max_rounds, timeout=timeout, train_config=train_config,
                   evaluate_fn=evaluate_fn)
    return ProbeResult(metric, unit, curve, tau)


def node_metrics(grid: Grid, arrays: ArrayRecord, nodes: Sequence[int], config: ConfigRecord | None = None,
                 timeout: float = 3600.0) -> dict[int, dict]:
    """Node id -> the MetricRecord (as a dict) each node's ClientApp replies to an ``evaluate`` message.

    Each node in ``nodes`` gets ``arrays`` and ``config``; a node that fails or does not answer
    raises RuntimeError, naming it.
    """
    messages = [Message(RecordDict({"arrays": arrays, "config": config or ConfigRecord()}),
                        message_type=MessageType.EVALUATE, dst_node_id=node) for node in sorted(nodes)]
    out: dict[int, dict] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = reply.metadata.src_node_id
        if reply.has_error():
            raise RuntimeError(f"node {node} failed to evaluate: {reply.error.reason.strip()[-200:]}")
        out[node] = dict(next(iter(reply.content.metric_records.values()), {}))
    if len(out) != len(messages):
        raise RuntimeError(f"{len(messages) - len(out)} of {len(messages)} nodes did not answer within {timeout:g} s")
    return dict(sorted(out.items()))


def evaluate_on_nodes(grid: Grid, arrays: ArrayRecord, nodes: Sequence[int], key: str,
                      config: ConfigRecord | None = None, timeout: float = 3600.0) -> float:
    """The num-examples-weighted mean of metric ``key`` that ``nodes``' ClientApps report for ``arrays``.

    Each node's evaluate reply must hold ``num-examples`` and ``key`` (:func:`node_metrics`).
    """
    pairs = []
    for node, record in node_metrics(grid, arrays, nodes, config, timeout).items():
        if key not in record or "num-examples" not in record:
            raise RuntimeError(f"node {node}'s evaluate reply lacks {key!r} or 'num-examples' (it has {sorted(record)})")
        pairs.append((float(record["num-examples"]), float(record[key])))
    return sum(n * v for n, v in pairs) / sum(n for n, _ in pairs)
