"""Looking an experiment's parts up in their registries: the one check every entry point runs.

:mod:`fedunlearn.config` validates the schema and knows no registry; this module resolves the data
set, partitioner, model and strategies the experiment names (registered names or ``module:attr``
import paths) and validates each part's settings table with the part's own settings class. The
CLI, the Python API (:func:`fedunlearn.phases.compare.compare`) and ``flwr run`` all call it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from fedunlearn.config import ExperimentConfig, load_config
from fedunlearn.data import data_parts, federated_data
from fedunlearn.models import model_part
from fedunlearn.registry import Part
from fedunlearn.settings import as_dict
from fedunlearn.strategies import StrategySpec, resolve_strategies


def check_parts(cfg: ExperimentConfig) -> list[StrategySpec]:
    """Validate every part the experiment names; returns its strategies, the reference first."""
    data_parts(cfg.data)
    model_part(cfg.model)
    return resolve_strategies(cfg)


def _filled(tables: dict[str, dict], parts: list[Part], prefix: str) -> dict[str, dict]:
    """``tables`` with every used part's table written out in full (defaults included)."""
    out = {name: dict(table) for name, table in tables.items()}
    for part in parts:
        settings = as_dict(part.build_settings(tables, prefix))
        if settings:
            out[part.name] = settings
    return out


def resolved(cfg: ExperimentConfig) -> ExperimentConfig:
    """The experiment with the settings of every part it uses spelled out, defaults included.

    This is what a results folder's config.toml holds, so it describes every result in it.
    """
    d, m, f = cfg.data, cfg.model, cfg.forgetting
    strategy_parts = list({p.name: p for s in resolve_strategies(cfg) for p in s.parts}.values())
    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(d, settings=_filled(d.settings, list(data_parts(d)), "data.")),
        model=dataclasses.replace(m, settings=_filled(m.settings, [model_part(m)], "model.")),
        forgetting=dataclasses.replace(f, settings=_filled(f.settings, strategy_parts, "forgetting.")))


def load_experiment(path: str | Path | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load an experiment, check its parts and build its data (missing files fail here, before any write).

    Returns the :func:`resolved` experiment.
    """
    cfg = resolved(load_config(path, overrides))
    federated_data(cfg.data, cfg.seed)
    return cfg
