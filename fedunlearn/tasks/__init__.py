"""Tasks: what local training minimises and how models are scored, one registry entry each.

A task is a part like a model or a strategy (``[task] name = "generative"``, its settings in
``[task.generative]``): it gives the clients their batch objective (:meth:`Task.objective`), the
server its scorer (:meth:`Task.scorer`: the per-round curve, the summary metrics, the probe's forget
metric and the checks that a comparison can tell methods apart), and it refuses, before any
training, the parts of an experiment that only make sense for another task (:meth:`Task.check`).
Strategies that work on weight deltas need no per-task code; a part that needs a classifier says
so with ``needs_classifier = True``. A user's own task is named by its import path.
"""

from __future__ import annotations

from fedunlearn.config import ExperimentConfig, TaskConfig
from fedunlearn.evaluation.metrics import METRICS
from fedunlearn.registry import Part, Registry, check_tables
from fedunlearn.tasks.base import Task
from fedunlearn.tasks.classification import ClassificationTask
from fedunlearn.tasks.generative import GENERATIVE_METRICS, MODEL_FREE_METRICS, GenerativeTask

TASKS: Registry = Registry("task", "task.name")
TASKS.register("classification", ClassificationTask)
TASKS.register("generative", GenerativeTask)

TASK_METRICS = {"classification": list(METRICS), "generative": [*GENERATIVE_METRICS, "weight_dist_to_retrain"]}
METRIC_COLUMNS = list(dict.fromkeys(m for ms in TASK_METRICS.values() for m in ms))  # in report order
GAPPED_COLUMNS = [m for m in METRIC_COLUMNS if m not in MODEL_FREE_METRICS]  # those a model can differ in


def task_part(cfg: TaskConfig) -> Part:
    """The task the config names, every ``[task.NAME]`` table checked (ConfigError if bad)."""
    part = TASKS.get(cfg.name)
    check_tables(cfg.settings, [part], [TASKS], "task.")
    return part


def build_task(cfg: TaskConfig) -> Task:
    """The configured task with its validated settings."""
    part = task_part(cfg)
    return part.obj(part.build_settings(cfg.settings, "task."))


def task_of(cfg: ExperimentConfig) -> Task:
    """The experiment's task."""
    return build_task(cfg.task)


def probe_metric(cfg: ExperimentConfig) -> str:
    """The probe's forget metric, ``probe.metric = "auto"`` resolved by the task."""
    return cfg.probe.metric if cfg.probe.metric != "auto" else task_of(cfg).default_probe_metric(cfg)


__all__ = ["GAPPED_COLUMNS", "METRIC_COLUMNS", "TASKS", "TASK_METRICS", "ClassificationTask", "GenerativeTask", "Task", "build_task", "probe_metric",
           "task_of", "task_part"]
