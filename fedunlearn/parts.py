"""Looking an experiment's parts up in their registries: the one check every entry point runs.

:mod:`fedunlearn.config` validates the schema and knows no registry; this module resolves the data
set, partitioner, model and strategies the experiment names (registered names or ``module:attr``
import paths) and validates each part's settings table with the part's own settings class. The
CLI, the Python API (:func:`fedunlearn.phases.compare.compare`) and ``flwr run`` all call it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from fedunlearn.config import (
    ExperimentConfig,
    load_config,
    validate_requests,
)
from fedunlearn.data import data_parts, federated_data, partition
from fedunlearn.data.forget_sets import ForgetSets
from fedunlearn.dilution import check_requests
from fedunlearn.models import model_part
from fedunlearn.registry import Part
from fedunlearn.settings import ConfigError, as_dict
from fedunlearn.strategies import StrategySpec, resolve_strategies
from fedunlearn.tasks import task_of, task_part


def check_parts(cfg: ExperimentConfig) -> list[StrategySpec]:
    """Validate every part the experiment names; returns its strategies, the reference first."""
    data_parts(cfg.data)
    model_part(cfg.model)
    check_requests(cfg)  # a late dilution prunes after a round: no request may come before it
    specs = resolve_strategies(cfg)
    task_of(cfg).check(cfg, [(s.label, p.obj) for s in specs for p in s.parts])
    return specs


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
    d, m, f, t = cfg.data, cfg.model, cfg.forgetting, cfg.task
    strategy_parts = list({p.name: p for s in resolve_strategies(cfg) for p in s.parts}.values())
    return dataclasses.replace(
        cfg,
        task=dataclasses.replace(t, settings=_filled(t.settings, [task_part(t)], "task.")),
        data=dataclasses.replace(d, settings=_filled(d.settings, list(data_parts(d)), "data.")),
        model=dataclasses.replace(m, settings=_filled(m.settings, [model_part(m)], "model.")),
        forgetting=dataclasses.replace(f, settings=_filled(f.settings, strategy_parts, "forgetting.")))


def pick(rule: str, sizes: list[int], taken: set[int], seed: int) -> int:
    """The client a rule names among those not ``taken``: by training-set size, or seeded at random.

    ``largest`` (ties: the lowest id), ``median`` (the middle of the clients sorted by size, then
    id; the lower middle for an even count), ``random`` (drawn with a Generator seeded by seed).
    """
    free = sorted((c for c in range(len(sizes)) if c not in taken), key=lambda c: (sizes[c], c))
    if not free:
        raise ConfigError(f"forget: no client is left for the rule {rule!r}")
    if rule == "largest":
        return max(free, key=lambda c: (sizes[c], -c))
    if rule == "median":
        return free[(len(free) - 1) // 2]
    return int(np.random.default_rng([seed, len(taken)]).choice(free))


def for_seed(cfg: ExperimentConfig, seed: int | None = None) -> ExperimentConfig:
    """The experiment at ``seed`` with every client rule resolved to an id on that seed's partition.

    Forget requests are resolved in order, each rule among the clients not yet named; the
    backdoor's ``"forgotten"`` becomes the forgotten clients. Without rules the experiment is
    returned as it is (with ``seed`` set).
    """
    cfg = dataclasses.replace(cfg, seed=cfg.seed if seed is None else seed)
    named = [c for r in cfg.forget for c in r.clients] + list(cfg.data.backdoor.clients)
    if not any(isinstance(c, str) for c in named):
        return cfg
    _, parts = partition(cfg.data, cfg.seed)
    sizes = [len(p) for p in parts]
    taken = {c for c in named if not isinstance(c, str)}
    forget = []
    for r in cfg.forget:
        clients = []
        for c in r.clients:
            if isinstance(c, str):
                c = pick(c, sizes, taken, cfg.seed)
                taken.add(c)
            clients.append(c)
        forget.append(dataclasses.replace(r, clients=clients))
    forgotten = sorted(c for r in forget for c in r.clients)
    backdoor: list[int] = []
    for c in cfg.data.backdoor.clients:
        if c == "forgotten":
            extra = forgotten
        elif isinstance(c, str):
            extra = [pick(c, sizes, set(backdoor) | set(forgotten), cfg.seed)]
        else:
            extra = [c]
        backdoor += [x for x in extra if x not in backdoor]
    data = dataclasses.replace(cfg.data, backdoor=dataclasses.replace(cfg.data.backdoor, clients=backdoor))
    cfg = dataclasses.replace(cfg, forget=forget, data=data)
    validate_requests(cfg.forget_requests(), cfg.data.num_clients, cfg.train.rounds, "forget")
    return cfg


def check_forget_sets(cfg: ExperimentConfig, seed: int | None = None) -> None:
    """Build every forget request's sets on ``seed``'s partition (default: the experiment's).

    A class the data set lacks, an index beyond its client's samples or ``poisoned`` on a clean
    client is only visible on the data; checked here, it fails before any folder or Ray exists.
    """
    cfg = for_seed(cfg, seed)
    ForgetSets.of(federated_data(cfg.data, cfg.seed), cfg.forget_requests(), cfg.seed)


def load_experiment(path: str | Path | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load an experiment, check its parts, build its data and forget sets (bad input fails here, before any write).

    Returns the :func:`resolved` experiment; client rules stay rules (:func:`for_seed` resolves them).
    """
    cfg = resolved(load_config(path, overrides))
    check_forget_sets(cfg)
    task_of(cfg).check(cfg, [])  # the task's own refusals, for training alone too (check_parts adds the strategies)
    return cfg
