"""Shared test setup."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedunlearn.config import config_to_dict, load_config, to_toml
from fedunlearn.flower.compat import server_task_identity
from fedunlearn.results import RunDir
from fedunlearn.store import PseudoGradientStore

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _flower_task_identity():
    """Messages built in unit tests (mock replies) need a task identity, as inside a ServerApp."""
    with server_task_identity():
        yield


@pytest.fixture
def trained_run(tmp_path) -> Path:
    """A run folder as `fedunlearn train` leaves it (default experiment, no history), made directly."""
    cfg = load_config(ROOT / "experiments/default.toml", ["store.history=false", "forgetting.strategies=[\"puf\"]"])
    run = RunDir(tmp_path / "run")
    run.config.parent.mkdir(parents=True)
    run.config.write_text(to_toml(config_to_dict(cfg)))
    run.save_checkpoint([], 30)
    PseudoGradientStore(run.store).save()
    return run.path
