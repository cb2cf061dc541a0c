"""The one module touching Flower's internals: its patches apply to the pinned flwr, and nothing else
in the project reaches past Flower's public API."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

from fedunlearn.flower import compat

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = {"flwr", "flwr.app", "flwr.clientapp", "flwr.serverapp", "flwr.serverapp.strategy", "flwr.simulation"}
PRIVATE_NAMES = ["_check_and_log_replies", "pull_interval", "TaskIdentity", "vce_api", "add_messages_to_queue"]
IMPORT = re.compile(r"^\s*(?:from\s+(flwr[\w.]*)\s+import|import\s+(flwr[\w.]*))", re.MULTILINE)


def project_files() -> list[Path]:
    mine = {ROOT / "fedunlearn" / "flower" / "compat.py", Path(__file__).resolve()}
    files = [*(ROOT / "fedunlearn").rglob("*.py"), *(ROOT / "tests").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]
    return [f for f in files if f.resolve() not in mine]


def test_nothing_outside_compat_imports_private_flower_modules_or_names():
    offenders = []
    for path in project_files():
        text = path.read_text()
        offenders += [f"{path.relative_to(ROOT)}: import {a or b}" for a, b in IMPORT.findall(text)
                      if (a or b) not in PUBLIC]
        offenders += [f"{path.relative_to(ROOT)}: {name}" for name in PRIVATE_NAMES if name in text]
    assert offenders == []


def test_the_grep_would_catch_a_private_import():
    text = "from flwr.server.superlink.fleet.vce import vce_api\nfrom flwr.app import Message\n"
    assert [a or b for a, b in IMPORT.findall(text) if (a or b) not in PUBLIC] == ["flwr.server.superlink.fleet.vce"]


def test_node_polling_patch_applies_to_the_pinned_flower():
    """Fails when a flwr upgrade changes the loop the patch replaces: update or drop the patch."""
    from flwr.server.superlink.fleet.vce import vce_api

    assert compat.fast_node_polling() is True
    assert getattr(vce_api.add_messages_to_queue, "fedunlearn_patched", False)


def test_node_polling_patch_leaves_unknown_code_alone_and_warns_once(monkeypatch):
    from flwr.server.superlink.fleet.vce import vce_api

    def add_messages_to_queue(state, queue, nodes_mapping, f_stop):  # not flwr 1.41's body
        return None

    monkeypatch.setattr(vce_api, "add_messages_to_queue", add_messages_to_queue)
    monkeypatch.setattr(compat, "_warned", set())
    with pytest.warns(RuntimeWarning, match="polling loop changed"):
        assert compat.fast_node_polling() is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compat.fast_node_polling() is False  # once is enough
    assert vce_api.add_messages_to_queue is add_messages_to_queue


def test_grid_pull_interval_is_shortened_only_on_the_in_memory_grid():
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    grid = object.__new__(InMemoryGrid)
    grid.pull_interval = 0.1
    assert compat.fast_grid_pulls(grid) is True and grid.pull_interval == compat.POLL_INTERVAL_S
    assert compat.fast_grid_pulls(object()) is False
