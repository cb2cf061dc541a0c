"""The interface every task implements (docs/methods.md, "Tasks")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fedunlearn.config import ConfigError, ExperimentConfig, ForgetRequest
from fedunlearn.data import FederatedData, partition
from fedunlearn.models import build_model
from fedunlearn.training import Objective


def is_energy_model(cfg: ExperimentConfig) -> bool:
    """Whether the experiment's model scores inputs by a free energy (the RBM) rather than class outputs."""
    shape = partition(cfg.data, cfg.seed)[0].input_shape  # the data set is loaded once per process
    # build_model, not the bare factory: a user's model that returns no nn.Module fails here in one line
    return hasattr(build_model(cfg.model, shape, 2, cfg.seed), "free_energy")


class Task:
    """What is learnt and how it is scored.

    Parameters
    ----------
    settings
        The task's own settings (its ``Settings`` dataclass, validated), or None when it has none.

    Attributes
    ----------
    classifier
        Whether models output class scores, so that parts declaring ``needs_classifier`` apply.
    probe_metrics
        The forget metrics the relearning probe may watch on this task.
    normalised_probe_metrics
        Those of ``probe_metrics`` whose value is normalised by the reference model (retrain), so
        that a finished probe is stale once the reference changes.
    """

    classifier: bool = True
    probe_metrics: tuple[str, ...] = ()
    normalised_probe_metrics: tuple[str, ...] = ()

    def __init__(self, settings: Any = None) -> None:
        self.settings = settings

    def objective(self, seed: int) -> Objective:
        """The batch loss a client's local run minimises (a fresh one per run: it may keep state)."""
        raise NotImplementedError

    def scorer(self, cfg: ExperimentConfig, data: FederatedData, requests: Sequence[ForgetRequest] = ()):
        """The scorer of models on the experiment's evaluation sets."""
        raise NotImplementedError

    def report_notes(self, cfg: ExperimentConfig) -> list[str]:
        """Sentences report.md states about how this task's metrics of ``cfg`` were computed."""
        return []

    def default_probe_metric(self, cfg: ExperimentConfig) -> str:
        """The probe's metric when ``probe.metric = "auto"``."""
        return self.probe_metrics[0]

    def check(self, cfg: ExperimentConfig, parts: Sequence[tuple[str, Any]]) -> None:
        """Refuse, before any training, what this task cannot run: ``parts`` are (label, part object) pairs
        of the experiment's strategies, each possibly declaring ``needs_classifier``."""
        metric = cfg.probe.metric
        if metric != "auto" and metric not in self.probe_metrics:
            raise ConfigError(f"probe.metric: {metric!r} does not apply to the {cfg.task.name} task; use one of "
                              f"{', '.join(('auto', *self.probe_metrics))}")
        if self.classifier:
            return
        for label, part in parts:
            if getattr(part, "needs_classifier", False):
                raise ConfigError(f"forgetting.strategies: {label} needs a classifier and task.name = "
                                  f"{cfg.task.name!r} has none; remove {label} from the list")
        if cfg.data.backdoor.clients:
            raise ConfigError(f"data.backdoor.clients: a backdoor is measured by a classifier's attack success rate "
                              f"and task.name = {cfg.task.name!r} has none; remove [data.backdoor]")
