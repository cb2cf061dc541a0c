"""Scorer: evaluates weight lists on the test set and on the retained and forgotten clients' data.

The simulator holds every partition, so it can measure what a real server could not (forget
accuracy on the forgotten client's own train data); that is the point of a simulator.
"""

from __future__ import annotations

import numpy as np

from fedunlearn.arrays import Weights
from fedunlearn.config import ExperimentConfig
from fedunlearn.data import FederatedData
from fedunlearn.models import build_model
from fedunlearn.training import evaluate, get_weights, set_weights


class Scorer:
    """Accuracy and loss of weight lists on the federation's evaluation sets (one model, built once).

    Parameters
    ----------
    cfg, data
        The experiment and its federated data.
    forgotten
        Clients whose train data form the forget set (the others' form the retain set).
    """

    def __init__(self, cfg: ExperimentConfig, data: FederatedData, forgotten: list[int] | None = None) -> None:
        self.cfg, self.data = cfg, data
        self.model = build_model(cfg.model, data.input_shape, data.num_classes, cfg.seed)
        self._initial = get_weights(self.model)  # the model is reused for evaluation: keep its init now
        self.forgotten = sorted(forgotten or [])
        if self.forgotten:
            self.x_retain, self.y_retain = data.union([c for c in range(len(data.clients)) if c not in self.forgotten])
            self.x_forget, self.y_forget = data.union(self.forgotten)

    def initial_weights(self) -> Weights:
        """The seeded initial weights of the experiment's model (the training run's w_0)."""
        return [w.copy() for w in self._initial]

    def on(self, weights: Weights, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """(accuracy, loss) of ``weights`` on (x, y)."""
        set_weights(self.model, weights)
        return evaluate(self.model, x, y)

    def test(self, weights: Weights) -> tuple[float, float]:
        return self.on(weights, self.data.x_test, self.data.y_test)

    def forget(self, weights: Weights) -> tuple[float, float]:
        return self.on(weights, self.x_forget, self.y_forget) if self.forgotten else (float("nan"), float("nan"))

    def backdoor_asr(self, weights: Weights) -> float:
        """Share of triggered non-target test images classified as the target (nan without a backdoor)."""
        if self.data.x_attack is None:
            return float("nan")
        return self.on(weights, self.data.x_attack, self.data.y_attack)[0]

    def round_metrics(self, weights: Weights) -> dict[str, float]:
        """The cheap per-round curve: test and forget accuracy (and backdoor ASR when there is one)."""
        test_acc, test_loss = self.test(weights)
        forget_acc, forget_loss = self.forget(weights)
        return {"test_acc": test_acc, "test_loss": test_loss, "forget_acc": forget_acc, "forget_loss": forget_loss,
                "backdoor_asr": self.backdoor_asr(weights)}

    def summary_metrics(self, weights: Weights) -> dict[str, float]:
        """Round metrics plus retain accuracy (the retained clients' train data)."""
        out = self.round_metrics(weights)
        out["retain_acc"] = self.on(weights, self.x_retain, self.y_retain)[0] if self.forgotten else float("nan")
        return out
