"""Unlearning metrics, one registry entry each (names follow the centralized unlearning literature).

Each metric takes a :class:`ModelView` (one model's predictions on every evaluation set, computed
once) and the retrained model's view, and returns a float (NaN where it does not apply). Adding a
metric is one function and one line in :data:`METRICS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from fedunlearn.arrays import Weights
from fedunlearn.evaluation.mia import (
    per_sample_loss,
    svc_mia_efficacy,
    true_class_confidence,
    yeom_member_rate,
)
from fedunlearn.evaluation.scorer import Scorer
from fedunlearn.training import predict_logits, set_weights


@dataclass
class ModelView:
    """One model's weights and logits on the test, retain, forget and backdoor-attack sets."""

    weights: Weights
    test: torch.Tensor
    retain: torch.Tensor
    forget: torch.Tensor
    attack: torch.Tensor | None
    scorer: Scorer

    @classmethod
    def of(cls, scorer: Scorer, weights: Weights) -> ModelView:
        set_weights(scorer.model, weights)
        d = scorer.data
        attack = predict_logits(scorer.model, d.x_attack) if d.x_attack is not None else None
        return cls(weights, predict_logits(scorer.model, d.x_test), predict_logits(scorer.model, scorer.x_retain),
                   predict_logits(scorer.model, scorer.x_forget), attack, scorer)


def _acc(logits: torch.Tensor, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == torch.from_numpy(labels)).float().mean())


def test_acc(m: ModelView, r: ModelView) -> float:
    return _acc(m.test, m.scorer.data.y_test)


def retain_acc(m: ModelView, r: ModelView) -> float:
    return _acc(m.retain, m.scorer.y_retain)


def forget_acc(m: ModelView, r: ModelView) -> float:
    return _acc(m.forget, m.scorer.y_forget)


def unlearn_acc(m: ModelView, r: ModelView) -> float:
    return 1.0 - forget_acc(m, r)


def mia_efficacy(m: ModelView, r: ModelView) -> float:
    s = m.scorer
    rng = np.random.default_rng([s.cfg.seed, 0x31A])
    return svc_mia_efficacy(true_class_confidence(m.retain, s.y_retain), true_class_confidence(m.test, s.data.y_test),
                            true_class_confidence(m.forget, s.y_forget), rng)


def mia_yeom(m: ModelView, r: ModelView) -> float:
    s = m.scorer
    return yeom_member_rate(per_sample_loss(m.retain, s.y_retain), per_sample_loss(m.forget, s.y_forget))


def backdoor_asr(m: ModelView, r: ModelView) -> float:
    return float("nan") if m.attack is None else _acc(m.attack, m.scorer.data.y_attack)


def weight_dist_to_retrain(m: ModelView, r: ModelView) -> float:
    """‖w − w_retrain‖ / ‖w_retrain‖ over all parameters."""
    diff = np.sqrt(sum(np.sum((a.astype(np.float64) - b) ** 2) for a, b in zip(m.weights, r.weights, strict=True)))
    return float(diff / np.sqrt(sum(np.sum(b.astype(np.float64) ** 2) for b in r.weights)))


def pred_kl_to_retrain(m: ModelView, r: ModelView) -> float:
    """Mean over the test set of KL(p_retrain ‖ p_model)."""
    log_p = torch.log_softmax(r.test.double(), 1)
    log_q = torch.log_softmax(m.test.double(), 1)
    return float((log_p.exp() * (log_p - log_q)).sum(1).mean())


METRICS: dict[str, Callable[[ModelView, ModelView], float]] = {
    "test_acc": test_acc,
    "retain_acc": retain_acc,
    "forget_acc": forget_acc,
    "unlearn_acc": unlearn_acc,
    "mia_efficacy": mia_efficacy,
    "mia_yeom": mia_yeom,
    "backdoor_asr": backdoor_asr,
    "weight_dist_to_retrain": weight_dist_to_retrain,
    "pred_kl_to_retrain": pred_kl_to_retrain,
}


def evaluate_all(scorer: Scorer, weights: Weights, retrain: ModelView) -> dict[str, float]:
    """Every registered metric of ``weights`` (against the retrained model's view)."""
    view = ModelView.of(scorer, weights)
    return {name: fn(view, retrain) for name, fn in METRICS.items()}
