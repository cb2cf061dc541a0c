"""Unlearning metrics, one registry entry each (names follow the centralized unlearning literature).

Each metric takes a :class:`ModelView` (one model's predictions on every evaluation set, computed
once) and the retrained model's view, and returns a float (NaN where it does not apply). Adding a
metric is one function and one line in :data:`METRICS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedunlearn.arrays import Weights
from fedunlearn.class_unlearning import nearest_classes
from fedunlearn.evaluation.mia import (
    MIA_NN_NEIGHBOURS,
    neighbour_mia,
    per_sample_loss,
    svc_mia_efficacy,
    true_class_confidence,
    yeom_member_rate,
)


@dataclass
class ModelView:
    """One model's weights and logits on the scorer's sets (test, retain, forget, forget-class test, kept, attack,
    validation)."""

    weights: Weights
    test: torch.Tensor
    retain: torch.Tensor
    forget: torch.Tensor
    forget_test: torch.Tensor
    kept: torch.Tensor
    attack: torch.Tensor | None
    scorer: Any  # the classification Scorer (it evaluates through this module, so it is not imported here)
    val: torch.Tensor | None = None

    @classmethod
    def of(cls, scorer: Any, weights: Weights) -> ModelView:
        d, s = scorer.data, scorer
        attack = s.logits(weights, d.x_attack) if d.x_attack is not None else None
        return cls(weights, s.logits(weights, s.x_test), s.logits(weights, s.x_retain), s.logits(weights, s.x_forget),
                   s.logits(weights, s.x_forget_test), s.logits(weights, s.x_kept), attack, scorer,
                   s.logits(weights, s.x_val))


def _acc(logits: torch.Tensor, labels: np.ndarray) -> float:
    if len(labels) == 0:
        return float("nan")
    return float((logits.argmax(1) == torch.from_numpy(labels)).float().mean())


def test_acc(m: ModelView, r: ModelView) -> float:
    return _acc(m.test, m.scorer.y_test)


def val_acc(m: ModelView, r: ModelView) -> float:
    """Accuracy on the validation split (``data.validation``; NaN without one): what tuning reads, never the test set."""
    return float("nan") if m.val is None else _acc(m.val, m.scorer.y_val)


def retain_acc(m: ModelView, r: ModelView) -> float:
    return _acc(m.retain, m.scorer.y_retain)


def forget_acc(m: ModelView, r: ModelView) -> float:
    return _acc(m.forget, m.scorer.y_forget)


def unlearn_acc(m: ModelView, r: ModelView) -> float:
    return 1.0 - forget_acc(m, r)


def forget_test_acc(m: ModelView, r: ModelView) -> float:
    """Accuracy on the test samples of the forget classes (class requests; retrain's is 0)."""
    return _acc(m.forget_test, m.scorer.y_forget_test)


def kept_acc(m: ModelView, r: ModelView) -> float:
    """Accuracy on what the holders of forget data keep (samples requests: the rest of their data)."""
    return _acc(m.kept, m.scorer.y_kept)


def mia_efficacy(m: ModelView, r: ModelView) -> float:
    s = m.scorer
    rng = np.random.default_rng([s.cfg.seed, 0x31A])
    if not len(s.y_forget):
        return float("nan")
    return svc_mia_efficacy(true_class_confidence(m.retain, s.y_retain), true_class_confidence(m.test, s.y_test),
                            true_class_confidence(m.forget, s.y_forget), rng)


def mia_yeom(m: ModelView, r: ModelView) -> float:
    s = m.scorer
    return yeom_member_rate(per_sample_loss(m.retain, s.y_retain), per_sample_loss(m.forget, s.y_forget))


def mia_nn(m: ModelView, r: ModelView) -> float:
    """MIA-NN (class requests): can an attacker tell forget-class train samples from forget-class test samples?

    Features: the model's probabilities on the ``MIA_NN_NEIGHBOURS`` classes nearest to the
    sample's class under the original model's class similarity, most similar first.
    """
    s = m.scorer
    if s.similarity is None:
        return float("nan")
    members = np.isin(s.y_forget, s.forget_classes)
    neighbours = np.zeros((s.data.num_classes, MIA_NN_NEIGHBOURS), dtype=np.int64)
    for c in s.forget_classes:
        neighbours[c] = nearest_classes(s.similarity, c, MIA_NN_NEIGHBOURS)

    def features(logits: torch.Tensor, labels: np.ndarray) -> np.ndarray:
        return np.take_along_axis(torch.softmax(logits.double(), 1).numpy(), neighbours[labels], 1)

    rng = np.random.default_rng([s.cfg.seed, 0x313])
    return neighbour_mia(features(m.forget[torch.from_numpy(members)], s.y_forget[members]),
                         features(m.forget_test, s.y_forget_test), rng)


def backdoor_asr(m: ModelView, r: ModelView) -> float:
    return float("nan") if m.attack is None else _acc(m.attack, m.scorer.data.y_attack)


def relative_distance(weights: Weights, reference: Weights, n: int) -> float:
    """‖w − w_ref‖ / ‖w_ref‖ over the first ``n`` arrays (the network's; an output filter is not a parameter)."""
    diff = np.sqrt(sum(np.sum((a.astype(np.float64) - b) ** 2) for a, b in zip(weights[:n], reference[:n], strict=True)))
    return float(diff / np.sqrt(sum(np.sum(b.astype(np.float64) ** 2) for b in reference[:n])))


def weight_dist_to_retrain(m: ModelView, r: ModelView) -> float:
    """‖w − w_retrain‖ / ‖w_retrain‖ over the network's parameters (an output filter is not a parameter)."""
    return relative_distance(m.weights, r.weights, m.scorer.num_arrays)


def pred_kl_to_retrain(m: ModelView, r: ModelView) -> float:
    """Mean over the test set of KL(p_retrain ‖ p_model)."""
    log_p = torch.log_softmax(r.test.double(), 1)
    log_q = torch.log_softmax(m.test.double(), 1)
    return float((log_p.exp() * (log_p - log_q)).sum(1).mean())


METRICS: dict[str, Callable[[ModelView, ModelView], float]] = {
    "test_acc": test_acc,
    "val_acc": val_acc,
    "retain_acc": retain_acc,
    "forget_acc": forget_acc,
    "unlearn_acc": unlearn_acc,
    "forget_test_acc": forget_test_acc,
    "kept_acc": kept_acc,
    "mia_efficacy": mia_efficacy,
    "mia_yeom": mia_yeom,
    "mia_nn": mia_nn,
    "backdoor_asr": backdoor_asr,
    "weight_dist_to_retrain": weight_dist_to_retrain,
    "pred_kl_to_retrain": pred_kl_to_retrain,
}


def evaluate_all(scorer: Any, weights: Weights, retrain: ModelView) -> dict[str, float]:
    """Every registered metric of ``weights`` (against the retrained model's view)."""
    view = ModelView.of(scorer, weights)
    return {name: fn(view, retrain) for name, fn in METRICS.items()}
