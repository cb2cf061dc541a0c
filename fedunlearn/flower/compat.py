"""The only module that touches Flower's internals (private modules, attributes and helpers).

Everything else in fedunlearn uses Flower's public API (``flwr.app``, ``flwr.clientapp``,
``flwr.serverapp``, ``flwr.simulation``); a test greps for it. Each patch here recognises the exact
code it replaces (by a hash of its source), applies only then, and otherwise warns once and
leaves Flower as it is, so moving to a new flwr release is a one-line pin change that can cost
speed but never behaviour. ``tests/test_flower_compat.py`` fails when a patch stops applying.

Why the patches (docs/benchmarks.md measures each):

* Flower's in-memory grid sleeps 0.1 s between pulls for replies, and the simulated SuperNodes
  poll for new messages every 0.1 s; for small models that is most of a round.
* The simulated SuperNodes' polling asks the link state for each node's messages in turn, and
  each ask scans every stored message: a tick costs (nodes x messages), so a round of 10 clients
  in a federation of 10,000 took seconds, and sending one message to every node took minutes.
  The patched loop reads the stored messages once per tick for all nodes.
* Which node holds which partition is known to the Simulation Engine only; asking every node
  costs one actor call per node at start-up. :func:`simulated_partitions` hands the engine's map
  to the ServerApp instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import warnings
from collections.abc import Iterator
from typing import Any

POLL_INTERVAL_S = 0.005  # read at every wait, so a benchmark can set Flower's 0.1 s back

# sha256 of the source of flwr 1.41's code each patch replaces or relies on.
NODE_POLLING_SOURCE_SHA256 = "953f4bd41a931a7779a4a670ab17b633f6e20b08a0128535328674466419777a"
GET_MESSAGE_INS_SOURCE_SHA256 = "6547c8dcbc62e12f5b2aa5c69f4de8c7c7072c10d6c0876512cf37197d941056"
REGISTER_NODES_SOURCE_SHA256 = "88a1cb6749e876ed204b9b250b6846dae53e8a20a5df1f79cff060eacab9b998"

_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"fedunlearn: {message}; running with Flower's own behaviour", RuntimeWarning, stacklevel=3)


def source_sha256(obj: Any) -> str:
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()


def fast_node_polling() -> bool:
    """Make the simulated SuperNodes' polling cost one pass over the stored messages per tick.

    Replaces ``flwr.server.superlink.fleet.vce.vce_api.add_messages_to_queue`` (when its source
    is exactly flwr 1.41's) with a loop that waits :data:`POLL_INTERVAL_S` instead of 0.1 s and,
    on flwr 1.41's in-memory link state, finds every node's next message in one pass
    (:func:`next_message_per_node`) instead of one scan of the store per node. Also records the
    engine's node -> partition map (:func:`simulated_partitions`). Returns whether the polling
    patch is in place (already, or now).
    """
    _patch_engine("_register_nodes", REGISTER_NODES_SOURCE_SHA256, "Flower's simulated SuperNode registration",
                  _recording_registration)
    return _patch_engine("add_messages_to_queue", NODE_POLLING_SOURCE_SHA256,
                         "Flower's simulated SuperNode polling loop", _one_pass_polling)


def _patch_engine(name: str, sha256: str, what: str, replacement_for) -> bool:
    """Replace the Simulation Engine's ``vce_api.<name>`` by ``replacement_for(original)`` when its
    source is flwr 1.41's (``sha256``); else warn once and leave it. Whether the patch is in place."""
    try:
        from flwr.server.superlink.fleet.vce import vce_api
        original = getattr(vce_api, name)
    except (ImportError, AttributeError):
        _warn_once(name, f"{what} was not found")
        return False
    if getattr(original, "fedunlearn_patched", False):
        return True
    if source_sha256(original) != sha256:
        _warn_once(name, f"{what} changed (not flwr 1.41's)")
        return False
    replacement = replacement_for(original)
    replacement.fedunlearn_patched = True
    setattr(vce_api, name, replacement)
    return True


def _one_pass_polling(original):
    """flwr 1.41's polling loop at :data:`POLL_INTERVAL_S`, one pass over the store per tick where it can."""
    one_pass = _one_pass_state_class()

    def add_messages_to_queue(state, queue, nodes_mapping, f_stop) -> None:
        while not f_stop.is_set():
            if one_pass is not None and type(state) is one_pass:
                messages = next_message_per_node(state, nodes_mapping)
            else:
                messages = [m for node_id in nodes_mapping for m in state.get_message_ins(node_id=node_id, limit=1)]
            for msg in messages:
                queue.put(msg)
            f_stop.wait(POLL_INTERVAL_S)

    return add_messages_to_queue


def _one_pass_state_class() -> type | None:
    """flwr 1.41's InMemoryLinkState when its ``get_message_ins`` is the one
    :func:`next_message_per_node` reproduces; None (one ask per node) otherwise."""
    try:
        from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
        from flwr.supercore.date import now  # noqa: F401 - what next_message_per_node stamps with
    except ImportError:
        _warn_once("one-pass", "Flower's InMemoryLinkState was not found")
        return None
    if source_sha256(InMemoryLinkState.get_message_ins) != GET_MESSAGE_INS_SOURCE_SHA256:
        _warn_once("one-pass", "InMemoryLinkState.get_message_ins changed (not flwr 1.41's); polling asks node by node")
        return None
    return InMemoryLinkState


def next_message_per_node(state: Any, node_ids: Any) -> list[Any]:
    """What ``state.get_message_ins(node_id=n, limit=1)`` returns for every ``n`` in ``node_ids``, in one pass.

    The same checks in the same order as flwr 1.41's ``InMemoryLinkState.get_message_ins`` (expired
    or orphaned messages are dropped; the first undelivered message of each node is taken and
    marked delivered), scanning the store once instead of once per node; returned in the order
    of ``node_ids`` (a node -> partition map, as Flower's loop walks it).
    """
    from flwr.supercore.date import now

    picked: dict[int, Any] = {}
    with state.lock:
        for msg_id in list(state.message_ins_store.keys()):
            state._check_stored_messages({msg_id})
            msg = state.message_ins_store.get(msg_id)
            if msg is None or msg.metadata.delivered_at != "":
                continue
            dst = msg.metadata.dst_node_id
            if dst in node_ids and dst not in picked:
                picked[dst] = msg
    delivered_at = now().isoformat()
    for msg in picked.values():
        msg.metadata.delivered_at = delivered_at
    return [picked[n] for n in sorted(picked, key=lambda n: node_ids[n])]


_node_partitions: dict[int, int] = {}


def _recording_registration(original):
    """flwr 1.41's node registration, keeping the node -> partition map it builds (:func:`simulated_partitions`)."""

    def register_nodes(num_nodes, state_factory):
        mapping = original(num_nodes=num_nodes, state_factory=state_factory)
        _node_partitions.clear()
        _node_partitions.update(mapping)
        return mapping

    return register_nodes


def recording_partitions() -> bool:
    """Whether the engine's node registration is wrapped (:func:`fast_node_polling` ran in this process)."""
    try:
        from flwr.server.superlink.fleet.vce import vce_api
    except ImportError:
        return False
    return bool(getattr(getattr(vce_api, "_register_nodes", None), "fedunlearn_patched", False))


def simulated_partitions(node_ids: Any) -> dict[int, int] | None:
    """Partition id -> node id, as the running Simulation Engine assigned them to ``node_ids``.

    None unless the engine in this process registered exactly these nodes (another run's map, a
    Deployment Engine, or a Flower whose registration changed): then ask the nodes instead.
    """
    mapping = dict(_node_partitions)
    if not mapping or set(mapping) != set(node_ids):
        return None
    return {p: n for n, p in mapping.items()}


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
