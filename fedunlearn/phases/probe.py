"""The relearning-delay probe: relearn the forgotten clients from a model and watch the forget metric.

Mode ``all``: Flower FedAvg rounds over every client (the forgotten ones re-added), the same local
recipe, the metric after each round. Mode ``alone``: the forgotten clients' local SGD alone, one
mini-batch at a time at ``probe.alone_lr``, simulated on the server (a Flower round is too coarse
to see a backdoor come back), the metric after each step. Every model probed in one comparison
starts its probe on the same clock, so all get the same client randomness.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord

from fedunlearn.config import ExperimentConfig
from fedunlearn.evaluation import Scorer
from fedunlearn.evaluation.probe import ProbeResult, threshold
from fedunlearn.federation import Federation
from fedunlearn.store import PseudoGradientStore
from fedunlearn.strategies import RecordingFedAvg
from fedunlearn.training import get_weights, set_weights, train_local

Weights = list[np.ndarray]
PROBE_CLOCK = 100_000  # probe rounds are numbered from here, apart from every training round


def metric_value(scorer: Scorer, weights: Weights, metric: str) -> float:
    if metric == "backdoor":
        return scorer.backdoor_asr(weights)
    acc, loss = scorer.forget(weights)
    return loss if metric == "forget_loss" else acc


def probe_all(fed: Federation, cfg: ExperimentConfig, scorer: Scorer, weights: Weights, tau: float) -> ProbeResult:
    """FedAvg over every client for ``probe.max_rounds`` rounds."""
    metric = cfg.probe_metric()
    strategy = RecordingFedAvg.from_config(cfg, PseudoGradientStore(), fed.node_of, range(cfg.data.num_clients))
    curve = [metric_value(scorer, weights, metric)]
    arrays = ArrayRecord(weights)
    for i in range(1, cfg.probe.max_rounds + 1):
        arrays, _ = fed.train_round(strategy, arrays, PROBE_CLOCK + i)
        curve.append(metric_value(scorer, arrays.to_numpy_ndarrays(), metric))
    return ProbeResult(metric, "rounds", curve, tau)


def probe_alone(cfg: ExperimentConfig, scorer: Scorer, weights: Weights, tau: float) -> ProbeResult:
    """The forgotten clients' own SGD, one mini-batch at a time, for ``probe.alone_max_steps`` steps."""
    metric = cfg.probe_metric()
    x, y = scorer.x_forget, scorer.y_forget
    model = scorer.model
    set_weights(model, weights)
    curve = [metric_value(scorer, weights, metric)]

    def after_step(m) -> bool:
        # metric_value loads these same weights back into the model: training goes on unchanged
        curve.append(metric_value(scorer, get_weights(m), metric))
        return False

    train_local(model, x, y, epochs=10**6, batch_size=cfg.train.batch_size, lr=cfg.probe.alone_lr,
                momentum=cfg.train.momentum, seed=PROBE_CLOCK, after_step=after_step,
                max_steps=cfg.probe.alone_max_steps)
    return ProbeResult(metric, "steps", curve, tau)


def probe_models(fed: Federation, cfg: ExperimentConfig, scorer: Scorer, original: Weights,
                 models: dict[str, Weights], log=print) -> dict[str, dict[str, ProbeResult]]:
    """Probe every model in every configured mode: {mode: {name: result}}."""
    metric = cfg.probe_metric()
    tau = threshold(metric, metric_value(scorer, original, metric), cfg.probe.alpha)
    results: dict[str, dict[str, ProbeResult]] = {}
    for mode in cfg.probe.modes:
        results[mode] = {}
        for name, weights in models.items():
            res = probe_all(fed, cfg, scorer, weights, tau) if mode == "all" else probe_alone(cfg, scorer, weights, tau)
            results[mode][name] = res
            log(f"  probe [{mode}] {name}: {metric} {res.curve[0]:.3f} -> {res.curve[-1]:.3f}, "
                f"delay {res.delay_text} {res.unit} (threshold {tau:.3f})")
    return results
