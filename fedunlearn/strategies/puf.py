"""PUF: forgetting by negated, scaled pseudo-gradients (Mora et al.; docs/methods.md, "Forgetting").

In the unlearning round the target u trains normally from w_t and sends Δ_u; the server applies
−η_u · Δ_u:

* regular (the round is also a normal round for the others), N = Σ_{k∈R∩S} n_k + Σ_{u∈U} n_u:
  w_{t+1} = w_t + Σ_{k∈R∩S} (n_k/N) Δ_k − η_u Σ_{u∈U} (n_u/N) Δ_u          (authors' η_u = 20)
* special (only the targets train), N_U = Σ_{u∈U} n_u:
  w_{t+1} = w_t − η_u Σ_{u∈U} (n_u/N_U) Δ_u                                   (authors' η_u = 2)

Settings ``[forgetting.puf]``: ``eta`` (η_u), ``mode`` and ``offline``.
Offline targets (this project's extension): with ``offline = true`` the targets are not asked to
train; their latest stored Δ is used instead, and the results say which round it came from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fedunlearn.arrays import Weights, apply_updates
from fedunlearn.settings import require
from fedunlearn.strategies.base import Unlearner, UnlearningContext
from fedunlearn.strategies.fedavg import ClientUpdate, RecordingFedAvg


@dataclass
class PUFSettings:
    """η_u (the authors use 20 in regular mode, 2 in special), the mode, and offline targets."""

    eta: float = 20.0
    mode: str = "regular"
    offline: bool = False

    def validate(self) -> None:
        require(self.eta > 0, "eta", f"must be > 0 (got {self.eta}); the authors use 20 (regular), 2 (special)")
        require(self.mode in ("regular", "special"), "mode", f"must be 'regular' or 'special' (got {self.mode!r})")


class PUFRound(RecordingFedAvg):
    """The unlearning round of PUF as a Flower strategy.

    Parameters
    ----------
    targets
        Partition ids to forget.
    eta
        η_u, the scale of the negated pseudo-gradients.
    mode
        ``"regular"`` or ``"special"``.
    offline
        Use the targets' latest stored Δ instead of asking them to train.
    """

    def __init__(self, *args, targets: Sequence[int], eta: float, mode: str, offline: bool, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.targets = sorted(targets)
        self.eta = eta
        self.mode = mode
        self.offline = offline
        self.sources: dict[int, str] = {}

    def sample(self, server_round: int) -> list[int]:
        others = super().sample(server_round) if self.mode == "regular" else []
        return sorted((set(others) - set(self.targets)) | (set() if self.offline else set(self.targets)))

    def combine(self, server_round: int, global_weights: Weights, updates: list[ClientUpdate]) -> Weights:
        fresh = {u.partition_id: u for u in updates if u.partition_id in self.targets}
        retained = [u for u in updates if u.partition_id not in self.targets]
        target_terms = []
        for pid in self.targets:
            if pid in fresh:
                target_terms.append((fresh[pid].num_examples, fresh[pid].delta))
                self.sources[pid] = f"fresh (round {server_round})"
            else:
                stored = self.store.latest(pid)
                target_terms.append((stored.num_examples, stored.delta))
                self.sources[pid] = f"stored (round {stored.server_round})"
        total = float(sum(n for n, _ in target_terms) + sum(u.num_examples for u in retained))
        if self.mode == "special":
            total = float(sum(n for n, _ in target_terms))
        terms = [(u.num_examples / total, u.delta) for u in retained]
        terms += [(-self.eta * n / total, d) for n, d in target_terms]
        return apply_updates(global_weights, terms)


class PUF(Unlearner):
    """PUF's unlearning round; recovery (FedAvg over the remaining clients) follows."""

    Settings = PUFSettings
    step_settings = ("eta",)

    def unlearn(self, ctx: UnlearningContext) -> Weights:
        f = self.settings
        strategy = PUFRound.from_config(ctx.cfg, ctx.store, ctx.node_of, ctx.remaining, targets=ctx.forgotten,
                                        eta=f.eta, mode=f.mode, offline=f.offline)
        weights = ctx.next_round(strategy, ctx.weights, "unlearn")
        ctx.notes["puf_source"] = "; ".join(f"client {p}: {s}" for p, s in sorted(strategy.sources.items()))
        return weights
