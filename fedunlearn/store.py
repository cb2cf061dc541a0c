"""PseudoGradientStore: the server's record of every client's pseudo-gradients.

A pseudo-gradient is Δ_k^t = w_k − w_t, the weights client k returned in round t minus the global
weights it was sent. The latest Δ of every client is always kept in RAM (float32). With
``keep_history`` every round's Δ is also written to disk (one ``.npz`` per client and round, in
float32 or float16) and cached in RAM up to a byte budget; entries evicted from the cache are read
back from disk on demand, so the history is bounded by disk, not RAM.
"""

from __future__ import annotations

import json
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedunlearn.io import atomic_savez, atomic_write_text


@dataclass
class PseudoGradient:
    """Client ``partition_id``'s Δ from ``server_round``, trained on ``num_examples`` samples."""

    partition_id: int
    server_round: int
    num_examples: int
    delta: list[np.ndarray]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.delta)


class PseudoGradientStore:
    """Latest and (optionally) historical pseudo-gradients, keyed by client.

    A client is whatever the strategy names it by: a partition id in fedunlearn's own runs, a
    Flower node id in anyone's ServerApp (:class:`~fedunlearn.strategies.RecordingFedAvg`).

    Parameters
    ----------
    directory
        Where history files and :meth:`save` snapshots go. A temporary folder when None.
    keep_history
        Keep every round's Δ, not only the latest (FedEraser needs it).
    ram_budget_bytes
        Most bytes of history kept in RAM; older entries are evicted (they stay on disk).
    dtype
        ``"float32"`` or ``"float16"`` for the history files.
    """

    def __init__(self, directory: str | Path | None = None, keep_history: bool = False,
                 ram_budget_bytes: int = 256 * 2**20, dtype: str = "float32") -> None:
        self.directory = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="pgstore-"))
        self.keep_history = keep_history
        self.ram_budget_bytes = ram_budget_bytes
        self.dtype = np.dtype(dtype)
        self._latest: dict[int, PseudoGradient] = {}
        self._index: dict[int, dict[int, int]] = {}  # partition id -> {round: num_examples}
        self._cache: OrderedDict[tuple[int, int], PseudoGradient] = OrderedDict()
        self._cache_bytes = 0

    # -- writing ---------------------------------------------------------------------------
    def record(self, partition_id: int, server_round: int, num_examples: int, delta: list[np.ndarray]) -> None:
        """Store client ``partition_id``'s Δ for ``server_round``."""
        latest = PseudoGradient(partition_id, server_round, num_examples,
                                [np.asarray(a, dtype=np.float32) for a in delta])
        self._latest[partition_id] = latest
        if not self.keep_history:
            return
        entry = PseudoGradient(partition_id, server_round, num_examples, [a.astype(self.dtype) for a in delta])
        atomic_savez(self._history_path(partition_id, server_round), num_examples=np.int64(num_examples),
                     **{f"a{i}": a for i, a in enumerate(entry.delta)})
        self._index.setdefault(partition_id, {})[server_round] = num_examples
        self._cache_put((partition_id, server_round), entry)

    def _cache_put(self, key: tuple[int, int], entry: PseudoGradient) -> None:
        old = self._cache.pop(key, None)
        if old is not None:
            self._cache_bytes -= old.nbytes
        self._cache[key] = entry
        self._cache_bytes += entry.nbytes
        while self._cache and self._cache_bytes > self.ram_budget_bytes:
            _, evicted = self._cache.popitem(last=False)
            self._cache_bytes -= evicted.nbytes

    def _history_path(self, partition_id: int, server_round: int) -> Path:
        return self.directory / "history" / f"client{partition_id:05d}_round{server_round:06d}.npz"

    # -- reading ---------------------------------------------------------------------------
    def clients(self) -> list[int]:
        """Partition ids with at least one recorded Δ, sorted."""
        return sorted(self._latest)

    @property
    def last_round(self) -> int:
        """The latest round any client's Δ was recorded in (0 before any): where the next phase's clock starts."""
        return max((pg.server_round for pg in self._latest.values()), default=0)

    def latest(self, partition_id: int) -> PseudoGradient:
        """The most recent Δ of ``partition_id`` (KeyError when it never trained)."""
        if partition_id not in self._latest:
            raise KeyError(f"no pseudo-gradient stored for client {partition_id}")
        return self._latest[partition_id]

    def history_rounds(self, partition_id: int) -> list[int]:
        """Rounds for which ``partition_id``'s Δ is in the history, sorted."""
        return sorted(self._index.get(partition_id, {}))

    def get(self, partition_id: int, server_round: int) -> PseudoGradient:
        """Δ of ``partition_id`` from ``server_round`` (from RAM if cached, else from disk)."""
        key = (partition_id, server_round)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        if server_round not in self._index.get(partition_id, {}):
            raise KeyError(f"no history for client {partition_id} in round {server_round}")
        with np.load(self._history_path(partition_id, server_round)) as f:
            delta = [f[f"a{i}"] for i in range(len(f.files) - 1)]
            entry = PseudoGradient(partition_id, server_round, int(f["num_examples"]), delta)
        self._cache_put(key, entry)
        return entry

    @property
    def cached_bytes(self) -> int:
        """Bytes of history currently held in RAM."""
        return self._cache_bytes

    # -- persistence -----------------------------------------------------------------------
    def copy_latest_from(self, other: PseudoGradientStore) -> None:
        """Start from ``other``'s latest Δ of every client (a strategy's own store forks the run's)."""
        self._latest.update(other._latest)

    def save(self, tag: str = "") -> None:
        """Write the latest Δs and the history index to ``directory`` (atomically, each file).

        A ``tag`` writes a named snapshot (``latest{tag}.npz``, ``store{tag}.json``) beside the
        current one, e.g. the state at a forget request's round.
        """
        arrays: dict[str, np.ndarray] = {}
        meta = {}
        for pid, pg in self._latest.items():
            meta[str(pid)] = [pg.server_round, pg.num_examples, len(pg.delta)]
            arrays.update({f"c{pid}_{i}": a for i, a in enumerate(pg.delta)})
        atomic_savez(self.directory / f"latest{tag}.npz", **arrays)
        index = {str(pid): {str(r): n for r, n in rounds.items()} for pid, rounds in self._index.items()}
        atomic_write_text(self.directory / f"store{tag}.json", json.dumps(
            {"latest": meta, "history": index, "keep_history": self.keep_history, "dtype": self.dtype.name}))

    @classmethod
    def load(cls, directory: str | Path, ram_budget_bytes: int = 256 * 2**20, tag: str = "") -> PseudoGradientStore:
        """Reopen a store written by :meth:`save` (with the same ``tag``)."""
        directory = Path(directory)
        info = json.loads((directory / f"store{tag}.json").read_text())
        store = cls(directory, info["keep_history"], ram_budget_bytes, info["dtype"])
        with np.load(directory / f"latest{tag}.npz") as f:
            for pid, (rnd, n, count) in info["latest"].items():
                store._latest[int(pid)] = PseudoGradient(int(pid), rnd, n, [f[f"c{pid}_{i}"] for i in range(count)])
        store._index = {int(p): {int(r): n for r, n in rs.items()} for p, rs in info["history"].items()}
        return store
