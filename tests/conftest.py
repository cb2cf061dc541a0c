"""Shared test setup."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

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


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small float64 products in Python loops: one torch thread is far faster than two on a loaded
    2-core machine (~50x measured); the module's tests run with one, then the count is restored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
