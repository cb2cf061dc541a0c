"""Scorer: evaluates models on the test set and on the data the forget requests remove and keep.

The simulator holds every partition, so it can measure what a real server could not (forget
accuracy on the forgotten data itself); that is the point of a simulator. A model is a weight
list, optionally with a server-side output filter appended (:mod:`fedunlearn.class_unlearning`):
every evaluation reads the filtered output.

The sets, for resolved requests (docs/methods.md, "Granularity" and "Metrics"):

* forget set: every train sample some request removes; retain set: every other train sample;
* kept set: what the holders of forget data keep (a samples request's client without its
  forgotten samples; empty for client requests);
* with class requests the test set is split in halves: the first calibrates (class similarity),
  the second is scored, its forget classes apart (``forget_test``) from the rest (``test``);
* with ``data.validation`` > 0, the validation split (held out of every client's data before
  partitioning): ``val_acc``, and what the protocol's own choices read instead of the test set
  (:attr:`Scorer.selection_metric`: the "until-retrain" recovery stop, IEU's tuning).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from fedunlearn.arrays import Weights
from fedunlearn.class_unlearning import (
    calibration_split,
    class_similarity,
    filtered_logits,
    split_filter,
)
from fedunlearn.config import ConfigError, ExperimentConfig, ForgetRequest
from fedunlearn.data import FederatedData
from fedunlearn.data.forget_sets import ForgetSets
from fedunlearn.evaluation.metrics import ModelView, evaluate_all
from fedunlearn.evaluation.probe import reaches, threshold
from fedunlearn.models import build_model
from fedunlearn.training import get_weights, predict_logits, set_weights


def _concat(parts: list[tuple[np.ndarray, np.ndarray]], like: FederatedData) -> tuple[np.ndarray, np.ndarray]:
    if not parts:
        return like.x_test[:0], like.y_test[:0]
    return np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])


class EvaluationSets:
    """The sets every task scores on, the experiment's model (built once) and its seeded initial weights.

    Parameters
    ----------
    cfg, data
        The experiment and its federated data.
    requests
        The forget requests, resolved (client ids, not rules); none: only the test set is scored.
    calibration
        Whether class requests split the test set in halves (the first calibrates class similarity).
    """

    def __init__(self, cfg: ExperimentConfig, data: FederatedData, requests: Sequence[ForgetRequest] = (),
                 calibration: bool = True) -> None:
        self.cfg, self.data = cfg, data
        self.model = build_model(cfg.model, data.input_shape, data.num_classes, cfg.seed)
        self._initial = get_weights(self.model)  # the model is reused for evaluation: keep its init now
        self.num_arrays = len(self._initial)
        self.requests = list(requests)
        self.forget_classes = sorted({c for r in self.requests for c in r.classes})
        calib, scored = (calibration_split(len(data.y_test)) if self.forget_classes and calibration
                         else (np.arange(0), np.arange(len(data.y_test))))
        self.x_calib, self.y_calib = data.x_test[calib], data.y_test[calib]
        in_forget = np.isin(data.y_test[scored], self.forget_classes)
        self.x_test, self.y_test = data.x_test[scored[~in_forget]], data.y_test[scored[~in_forget]]
        self.x_forget_test, self.y_forget_test = data.x_test[scored[in_forget]], data.y_test[scored[in_forget]]
        x_val, y_val = (data.x_val, data.y_val) if data.y_val is not None else (data.x_test[:0], data.y_test[:0])
        kept_val = ~np.isin(y_val, self.forget_classes)  # like test_acc: the remaining classes only
        self.x_val, self.y_val = x_val[kept_val], y_val[kept_val]
        sets = ForgetSets.of(data, self.requests, cfg.seed) if self.requests else None
        forget, retain, kept = [], [], []
        for pid, c in enumerate(data.clients):
            removed = sets.removed[pid] if sets else np.zeros(0, dtype=np.int64)
            rest = np.setdiff1d(np.arange(c.num_examples), removed)
            forget.append((c.x_train[removed], c.y_train[removed]))
            retain.append((c.x_train[rest], c.y_train[rest]))
            if len(removed) and len(rest):
                kept.append(retain[-1])
        self.x_forget, self.y_forget = _concat(forget, data)
        self.x_retain, self.y_retain = _concat(retain, data)
        self.x_kept, self.y_kept = _concat(kept, data)

    @property
    def forgotten(self) -> bool:
        """Whether there is a forget set (a request)."""
        return bool(self.requests)

    def initial_weights(self) -> Weights:
        """The seeded initial weights of the experiment's model (the training run's w_0)."""
        return [w.copy() for w in self._initial]

    @property
    def has_validation(self) -> bool:
        """Whether the experiment holds a validation split out (``data.validation`` > 0)."""
        return len(self.y_val) > 0

    def write_artifacts(self, models: dict[str, Weights], out: Path) -> None:
        """Write what the task draws of the compared models into the seed folder ``out`` (nothing by default)."""

    def round_line(self, metrics: dict[str, float]) -> str:
        """The per-round metrics as one console line (NaN ones left out)."""
        return "  ".join(f"{k}={metrics[k]:.4f}" for k in self.round_columns if not math.isnan(metrics[k]))


class Scorer(EvaluationSets):
    """The classification task's scorer: accuracy, loss and the unlearning metrics of models on the sets.

    Parameters
    ----------
    cfg, data, requests
        As for :class:`EvaluationSets`.
    """

    round_columns = ["test_acc", "test_loss", "forget_acc", "backdoor_asr"]
    probe_metrics = ("forget_acc", "forget_loss", "backdoor")

    def __init__(self, cfg: ExperimentConfig, data: FederatedData, requests: Sequence[ForgetRequest] = ()) -> None:
        super().__init__(cfg, data, requests)
        self.similarity: np.ndarray | None = None

    def logits(self, weights: Weights, x: np.ndarray) -> torch.Tensor:
        """The model's logits on ``x`` (log of the filtered probabilities when it carries an output filter)."""
        network, output_filter = split_filter(weights, self.num_arrays)
        set_weights(self.model, network)
        z = predict_logits(self.model, x)
        return z if output_filter is None else filtered_logits(z, output_filter)

    def probabilities(self, weights: Weights, x: np.ndarray) -> np.ndarray:
        return torch.softmax(self.logits(weights, x).double(), 1).numpy()

    def on(self, weights: Weights, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """(accuracy, loss) of ``weights`` on (x, y); NaN for an empty set."""
        if len(y) == 0:
            return float("nan"), float("nan")
        z, yt = self.logits(weights, x), torch.from_numpy(y)
        return float((z.argmax(1) == yt).float().mean()), float(torch.nn.functional.cross_entropy(z, yt))

    def similarity_of(self, weights: Weights) -> np.ndarray:
        """Class similarity S under a model (its output filter applied), on the calibration half."""
        return class_similarity(self.probabilities(weights, self.x_calib), self.y_calib, self.data.num_classes)

    def calibrate(self, original: Weights) -> None:
        """Class similarity S under the original model (class requests only): MIA-NN's neighbours."""
        if self.forget_classes:
            self.similarity = self.similarity_of(original)

    def test(self, weights: Weights) -> tuple[float, float]:
        """On the test set (with class requests: its scored half, forget classes left out)."""
        return self.on(weights, self.x_test, self.y_test)

    def forget(self, weights: Weights) -> tuple[float, float]:
        return self.on(weights, self.x_forget, self.y_forget)

    def validation(self, weights: Weights) -> tuple[float, float]:
        """On the validation split (NaN without one)."""
        return self.on(weights, self.x_val, self.y_val)

    @property
    def selection_metric(self) -> str:
        """The accuracy the protocol's own choices compare (recovery stop, tuning): ``val_acc`` when a
        validation split exists, else ``test_acc`` (docs/methods.md, "Evaluation")."""
        return "val_acc" if self.has_validation else "test_acc"

    def selection_score(self, weights: Weights) -> float:
        """The :attr:`selection_metric` of ``weights`` (higher is better)."""
        return (self.validation if self.has_validation else self.test)(weights)[0]

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
        """Round metrics plus retain accuracy, forget-class test accuracy, the holders' kept data accuracy
        and validation accuracy (NaN without a validation split)."""
        out = self.round_metrics(weights)
        out["retain_acc"] = self.on(weights, self.x_retain, self.y_retain)[0] if self.forgotten else float("nan")
        out["forget_test_acc"] = self.on(weights, self.x_forget_test, self.y_forget_test)[0]
        out["kept_acc"] = self.on(weights, self.x_kept, self.y_kept)[0]
        out["val_acc"] = self.validation(weights)[0]
        return out

    def evaluate(self, weights: Weights, reference: Weights) -> dict[str, float]:
        """Every metric of :data:`~fedunlearn.evaluation.metrics.METRICS` (against the reference model)."""
        return evaluate_all(self, weights, ModelView.of(self, reference))

    def probe_value(self, metric: str, original: Weights, reference: Weights) -> Callable[[Weights], float]:
        """The probe's forget metric of a model: ``backdoor`` ASR, ``forget_loss`` or ``forget_acc``."""
        if metric == "backdoor":
            return self.backdoor_asr
        if metric == "forget_loss":
            return lambda w: self.forget(w)[1]
        if metric == "forget_acc":
            return lambda w: self.forget(w)[0]
        raise ConfigError(f"probe.metric: {metric!r} does not apply to the classification task; use one of "
                          f"auto, {', '.join(self.probe_metrics)}")

    def check_original(self, original: dict[str, float]) -> None:
        """Refuse to compare strategies on a model that holds nothing to forget (any request kind)."""
        cfg, f = self.cfg, self.cfg.forgetting
        if original["test_acc"] < f.min_original_test_acc:
            raise ConfigError(f"forgetting.min_original_test_acc: the original model reached test accuracy "
                              f"{original['test_acc']:.3f} < {f.min_original_test_acc} (seed {cfg.seed}), so it never "
                              "converged; train longer (train.rounds, train.lr) before comparing strategies")
        if original["forget_acc"] < f.min_original_forget_acc:
            what = "; ".join(r.describe() for r in cfg.forget_requests())
            raise ConfigError(f"forgetting.min_original_forget_acc: the original model's accuracy on the data to "
                              f"forget ({what}) is {original['forget_acc']:.3f} < {f.min_original_forget_acc} (seed "
                              f"{cfg.seed}): it never learnt what must be forgotten, so no strategy can be told apart; "
                              "train longer or forget data the model learnt")
        asr = original["backdoor_asr"]
        if asr == asr and asr < f.min_original_backdoor_asr:
            raise ConfigError(f"forgetting.min_original_backdoor_asr: the original model's backdoor attack success "
                              f"rate is {asr:.3f} < {f.min_original_backdoor_asr} (seed {cfg.seed}): it never learnt "
                              "the backdoor, so no strategy can be told apart; strengthen it (data.backdoor.fraction, "
                              "patch_size, data.partition) before comparing")

    def check_separation(self, metric: str, original: Weights, reference: Weights) -> None:
        """Refuse a comparison whose reference already scores like the original on the forget set."""
        value = self.probe_value(metric, original, reference)
        value_o, value_r = value(original), value(reference)
        if reaches(metric, value_r, threshold(metric, value_o, self.cfg.probe.alpha)):
            raise ConfigError(f"forgetting.check_separation: on the forgotten clients the retrained model scores "
                              f"{metric} = {value_r:.4f}, as the original does ({value_o:.4f}) within probe.alpha: "
                              "there is nothing measurable to forget, so strategies cannot be told apart; forget a "
                              "client whose data the others do not explain (a backdoor, mislabelled data) or use "
                              "probe.metric = forget_loss")
