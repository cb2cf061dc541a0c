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


@pytest.fixture
def link():
    """flwr 1.41's in-memory link state with a run and ``num_nodes`` nodes, as run_simulation sets it up.

    Returns a function ``num_nodes -> (state, grid, node -> partition map)``.
    """
    from flwr.proto.task_pb2 import Task
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.server.superlink.linkstate import LinkStateFactory
    from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
    from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.superlink.federation import NoOpFederationManager
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 11, 7, 1  # node 1: the SuperLink

    def make(num_nodes: int):
        factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
        state = factory.state()
        run = Run.create_empty(run_id=7)
        run.primary_task_id, run.federation_id = 11, NOOP_FEDERATION_ID
        state.run_ids[7] = RunRecord(run=run)
        state.task_store[11] = Task(task_id=11, run_id=7)
        mapping = vce_api._register_nodes(num_nodes=num_nodes, state_factory=factory)
        grid = InMemoryGrid(state_factory=factory)
        grid.set_run(run)
        return state, grid, mapping

    yield make
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def push(grid, mapping, partitions: list[int]) -> None:
    """One message to the node of each partition listed (repeats allowed), each tagged with its position."""
    from flwr.app import ConfigRecord, Message, MessageType, RecordDict

    node_of = {p: n for n, p in mapping.items()}
    grid.push_messages([Message(RecordDict({"tag": ConfigRecord({"i": i})}), dst_node_id=node_of[p],
                                message_type=MessageType.QUERY) for i, p in enumerate(partitions)])


def delivered(messages, mapping) -> list[tuple[int, int]]:
    """(partition, tag) of each message, in the order given (Flower's loop walks nodes by partition)."""
    return [(mapping[m.metadata.dst_node_id], int(m.content["tag"]["i"])) for m in messages]


def test_one_pass_polling_delivers_what_flowers_node_by_node_polling_delivers(link):
    """Tick by tick the same messages as flwr 1.41's loop (first undelivered per node), marked delivered."""
    assert compat._one_pass_state_class() is not None  # the pinned flwr's get_message_ins is the one reproduced
    partitions = [3, 0, 7, 3, 5, 0, 3]
    ours, theirs = link(10), link(10)
    push(ours[1], ours[2], partitions)
    push(theirs[1], theirs[2], partitions)
    for _ in range(4):
        one_pass = compat.next_message_per_node(ours[0], ours[2])
        node_by_node = [m for n in theirs[2] for m in theirs[0].get_message_ins(node_id=n, limit=1)]
        assert delivered(one_pass, ours[2]) == delivered(node_by_node, theirs[2])
        assert all(m.metadata.delivered_at != "" for m in one_pass)
    assert delivered(compat.next_message_per_node(ours[0], ours[2]), ours[2]) == []


def test_one_pass_polling_checks_each_stored_message_once_per_tick_whatever_the_number_of_nodes(link):
    """The cost that made a round of 10 clients take seconds among 10,000 nodes: (nodes x messages) checks."""
    state, grid, mapping = link(2000)
    push(grid, mapping, list(range(10)))
    checks = []
    original = state._check_stored_messages
    state._check_stored_messages = lambda ids, run_id=None: (checks.append(len(ids)), original(ids, run_id))[1]
    for n in mapping:  # Flower's loop: every node scans every stored message
        state.get_message_ins(node_id=n, limit=1)
    flowers = len(checks)
    for m in state.message_ins_store.values():
        m.metadata.delivered_at = ""
    checks.clear()
    assert len(compat.next_message_per_node(state, mapping)) == 10
    assert len(checks) == 10 and flowers >= 2000 * 9


def test_the_engines_partition_map_is_kept_for_the_server_app(link, monkeypatch):
    monkeypatch.setattr(compat, "_node_partitions", {})
    compat.fast_node_polling()  # also wraps the engine's node registration
    assert compat.recording_partitions()
    _, _, mapping = link(20)
    assert compat.simulated_partitions(set(mapping)) == {p: n for n, p in mapping.items()}
    assert compat.simulated_partitions(set(list(mapping)[:19])) is None  # not these nodes: ask them
    assert compat.simulated_partitions({1, 2}) is None


def test_registration_patch_leaves_unknown_code_alone_and_warns(monkeypatch):
    from flwr.server.superlink.fleet.vce import vce_api

    def register_nodes(num_nodes, state_factory):  # not flwr 1.41's body
        return {}

    monkeypatch.setattr(vce_api, "_register_nodes", register_nodes)
    monkeypatch.setattr(compat, "_warned", set())
    with pytest.warns(RuntimeWarning, match="registration changed"):
        compat.fast_node_polling()
    assert vce_api._register_nodes is register_nodes and not compat.recording_partitions()
