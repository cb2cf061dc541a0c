"""The only module that touches Flower's internals (private modules, attributes and helpers).

Everything else in fedunlearn uses Flower's public API (``flwr.app``, ``flwr.clientapp``,
``flwr.serverapp``, ``flwr.simulation``); a test greps for it. Each patch here recognises the exact
code it replaces (by a hash of its source), applies only then, and otherwise warns once and
leaves Flower as it is, so moving to a new flwr release is a one-line pin change that can cost
speed but never behaviour. ``tests/test_flower_compat.py`` fails when a patch stops applying.

Why the patches: Flower's in-memory grid sleeps 0.1 s between pulls for replies, and the
simulated SuperNodes poll for new messages every 0.1 s; for small models that is most of a
round (docs/benchmarks.md measures what the shorter waits save).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import warnings
from collections.abc import Iterator
from typing import Any

POLL_INTERVAL_S = 0.005  # read at every wait, so a benchmark can set Flower's 0.1 s back

# sha256 of the source of flwr 1.41's vce_api.add_messages_to_queue, the loop replaced below.
NODE_POLLING_SOURCE_SHA256 = "953f4bd41a931a7779a4a670ab17b633f6e20b08a0128535328674466419777a"

_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"fedunlearn: {message}; running with Flower's own behaviour", RuntimeWarning, stacklevel=3)


def source_sha256(obj: Any) -> str:
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()


def fast_node_polling() -> bool:
    """Make the simulated SuperNodes poll for messages every :data:`POLL_INTERVAL_S` instead of 0.1 s.

    Replaces ``flwr.server.superlink.fleet.vce.vce_api.add_messages_to_queue`` with the same loop
    and a shorter wait, when its source is exactly flwr 1.41's. Returns whether the patch is in
    place (already, or now).
    """
    try:
        from flwr.server.superlink.fleet.vce import vce_api
        original = vce_api.add_messages_to_queue
    except (ImportError, AttributeError):
        _warn_once("node-polling", "Flower's simulated SuperNode polling loop was not found")
        return False
    if getattr(original, "fedunlearn_patched", False):
        return True
    if source_sha256(original) != NODE_POLLING_SOURCE_SHA256:
        _warn_once("node-polling", "Flower's simulated SuperNode polling loop changed (not flwr 1.41's)")
        return False

    def add_messages_to_queue(state, queue, nodes_mapping, f_stop) -> None:
        while not f_stop.is_set():
            for node_id in nodes_mapping.keys():
                for msg in state.get_message_ins(node_id=node_id, limit=1):
                    queue.put(msg)
            f_stop.wait(POLL_INTERVAL_S)

    add_messages_to_queue.fedunlearn_patched = True
    vce_api.add_messages_to_queue = add_messages_to_queue
    return True


def fast_grid_pulls(grid: Any) -> bool:
    """Shorten the in-memory grid's wait between pulls for replies (flwr 1.41's ``pull_interval``)."""
    try:
        from flwr.superlink.grid.inmemory_grid import InMemoryGrid
    except ImportError:
        _warn_once("grid-pull", "Flower's InMemoryGrid was not found")
        return False
    if not isinstance(grid, InMemoryGrid):
        return False  # another grid (deployment): nothing to shorten
    if not isinstance(getattr(grid, "pull_interval", None), float):
        _warn_once("grid-pull", "InMemoryGrid has no float pull_interval any more")
        return False
    grid.pull_interval = POLL_INTERVAL_S
    return True


@contextlib.contextmanager
def server_task_identity() -> Iterator[None]:
    """Stamp messages built outside a running ServerApp (mock replies in tests) with a task identity.

    Flower sets the identity of the running task on every message it builds; a unit test that
    builds messages without a ServerApp needs one. A real simulation sets its own; the previous
    identity is restored on exit so both can run in one process.
    """
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    if saved[1] is None:
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved
