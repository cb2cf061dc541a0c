"""The classification task: cross-entropy training, accuracy-based metrics (the default)."""

from __future__ import annotations

from collections.abc import Sequence

from fedunlearn.config import ConfigError, ExperimentConfig, ForgetRequest
from fedunlearn.data import FederatedData
from fedunlearn.evaluation.scorer import Scorer
from fedunlearn.tasks.base import Task, is_energy_model
from fedunlearn.training import Objective, cross_entropy


class ClassificationTask(Task):
    """Labels are predicted: local runs minimise cross-entropy, models are scored by :class:`Scorer`."""

    classifier = True
    probe_metrics = Scorer.probe_metrics

    def objective(self, seed: int) -> Objective:
        return cross_entropy

    def scorer(self, cfg: ExperimentConfig, data: FederatedData, requests: Sequence[ForgetRequest] = ()) -> Scorer:
        return Scorer(cfg, data, requests)

    def check(self, cfg: ExperimentConfig, parts) -> None:
        super().check(cfg, parts)
        if is_energy_model(cfg):
            raise ConfigError(f"model.name: {cfg.model.name!r} is an energy model without class outputs; set "
                              "task.name = \"generative\" or choose a classifier")

    def default_probe_metric(self, cfg: ExperimentConfig) -> str:
        """``backdoor`` (attack success rate) when the experiment has a trigger, else ``forget_acc``."""
        return "backdoor" if cfg.has_trigger() else "forget_acc"
