"""Which train samples a forget request removes, client by client (docs/methods.md, "Granularity").

The server (for scoring, and to know who holds forget data) and every client (to train on what
remains, or on its forget data alone) compute the same sets from the same inputs: the client's
data, the request and the seed. Nothing but the requests travels in Flower messages.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from fedunlearn.config import ForgetRequest
from fedunlearn.settings import ConfigError

FRACTION_STREAM = 0x5A3  # keeps the fraction draw apart from every other use of the seed


def forget_indices(request: ForgetRequest, partition_id: int, labels: np.ndarray, poisoned: np.ndarray,
                   seed: int) -> np.ndarray:
    """Sorted indices into one client's train data that ``request`` removes.

    Parameters
    ----------
    request
        A resolved request (client ids, not rules).
    partition_id, labels, poisoned
        The client, the labels it trains on and the indices of its backdoored samples.
    seed
        The experiment's seed (a fraction is drawn with a Generator seeded by seed, client, round).
    """
    n = len(labels)
    if request.kind == "class":
        return np.flatnonzero(np.isin(labels, request.classes))
    if partition_id not in request.clients:
        return np.zeros(0, dtype=np.int64)
    s = request.samples
    if request.kind == "client":
        return np.arange(n)
    if s == "poisoned":
        return np.sort(np.asarray(poisoned, dtype=np.int64))
    if isinstance(s, float):
        rng = np.random.default_rng([seed, FRACTION_STREAM, partition_id, request.round])
        return np.sort(rng.permutation(n)[:max(1, int(round(s * n)))])
    return np.sort(np.asarray(s, dtype=np.int64))


def requests_json(requests: Sequence[ForgetRequest]) -> str:
    """Requests as the JSON string a client receives (``exclude`` / ``only`` in its config)."""
    return json.dumps([asdict(r) for r in requests], sort_keys=True)


def requests_from_json(text: str) -> list[ForgetRequest]:
    return [ForgetRequest(**raw) for raw in json.loads(text)] if text else []


def kept_indices(labels: np.ndarray, poisoned: np.ndarray, partition_id: int, seed: int,
                 exclude: Sequence[ForgetRequest], only: Sequence[ForgetRequest]) -> np.ndarray:
    """The samples one client trains on: all but ``exclude``'s; with ``only``, just ``only``'s forget samples."""
    keep = np.ones(len(labels), dtype=bool)
    for r in exclude:
        keep[forget_indices(r, partition_id, labels, poisoned, seed)] = False
    if only:
        chosen = np.zeros(len(labels), dtype=bool)
        for r in only:
            chosen[forget_indices(r, partition_id, labels, poisoned, seed)] = True
        keep &= chosen
    return np.flatnonzero(keep)


@dataclass
class ForgetSets:
    """What a list of requests removes from a federation: per client, the removed indices.

    Attributes
    ----------
    removed
        Per client, the sorted indices of its train samples some request removes.
    holders
        Per request, the clients holding some of its forget data.
    """

    removed: list[np.ndarray]
    holders: list[list[int]]

    @classmethod
    def of(cls, data, requests: Sequence[ForgetRequest], seed: int) -> ForgetSets:
        """The sets of ``requests`` on ``data`` (a FederatedData); ConfigError if a request names what is not there."""
        num_classes = data.num_classes
        removed = [np.zeros(len(c.y_train), dtype=bool) for c in data.clients]
        holders = []
        for i, r in enumerate(requests):
            where = f"forget[{i}]"
            bad = [c for c in r.classes if c >= num_classes]
            if bad:
                raise ConfigError(f"{where}.classes: {bad[0]} is not a class of the data set (0..{num_classes - 1})")
            if r.samples == "poisoned":
                clean = [c for c in r.clients if len(data.clients[c].poisoned) == 0]
                if clean:
                    raise ConfigError(f"{where}.samples: client {clean[0]} has no poisoned samples; name it in "
                                      "data.backdoor.clients or select a fraction or indices")
            if isinstance(r.samples, list):
                n = len(data.clients[r.clients[0]].y_train)
                if max(r.samples) >= n:
                    raise ConfigError(f"{where}.samples: index {max(r.samples)} is beyond client {r.clients[0]}'s "
                                      f"{n} train samples (0..{n - 1})")
            mine = []
            for pid, c in enumerate(data.clients):
                idx = forget_indices(r, pid, c.y_train, c.poisoned, seed)
                if len(idx):
                    removed[pid][idx] = True
                    mine.append(pid)
            if not mine:
                raise ConfigError(f"{where}: no client holds any sample it names ({r.describe()}); nothing to forget")
            holders.append(mine)
        sets = cls([np.flatnonzero(m) for m in removed], holders)
        if not sets.remaining_clients(data):
            raise ConfigError("forget: the requests remove every training sample; keep some data in the federation")
        return sets

    def remaining_clients(self, data) -> list[int]:
        """Clients with some data left after every request (the others leave the federation)."""
        return [pid for pid, c in enumerate(data.clients) if len(self.removed[pid]) < len(c.y_train)]
