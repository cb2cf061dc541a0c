"""PUF: forgetting by negated, scaled pseudo-gradients (Mora et al.; docs/methods.md, "Forgetting").

In the unlearning round the target u trains normally from w_t and sends Δ_u; the server applies
−η_u · Δ_u:

* regular (the round is also a normal round for the others), N = Σ_{k∈R∩S} n_k + Σ_{u∈U} n_u:
  w_{t+1} = w_t + Σ_{k∈R∩S} (n_k/N) Δ_k − η_u Σ_{u∈U} (n_u/N) Δ_u          (authors' η_u = 20)
* special (only the targets train), N_U = Σ_{u∈U} n_u:
  w_{t+1} = w_t − η_u Σ_{u∈U} (n_u/N_U) Δ_u                                   (authors' η_u = 2)

Generalised to samples and classes (docs/methods.md, "Granularity"): the holders k of forget data
F_k train from w_t on F_k alone and send Δ_k^F; everyone (the holders too) sends the regular Δ_k^R
on what remains, and n_u above becomes |F_k|:

* regular: w_{t+1} = w_t + Σ_{k∈S} (n_k^R/N) Δ_k^R − η_u Σ_k (|F_k|/N) Δ_k^F, N every count used;
* special: w_{t+1} = w_t − η_u Σ_k (|F_k|/N_F) Δ_k^F.

For a client request F_k is all of k's data and k has nothing left: exactly the formulas above.

Settings ``[forgetting.puf]``: ``eta`` (η_u), ``mode`` and ``offline``.
Offline targets (this project's extension, client requests only): with ``offline = true`` the
targets are not asked to train; their latest stored Δ is used instead, and the results say which
round it came from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from flwr.app import ConfigRecord

from fedunlearn.arrays import Weights, apply_updates
from fedunlearn.config import ForgetRequest
from fedunlearn.data.forget_sets import requests_json
from fedunlearn.settings import require
from fedunlearn.store import PseudoGradientStore
from fedunlearn.strategies.base import Unlearner, UnlearningContext
from fedunlearn.strategies.fedavg import FORGET, REGULAR, ClientUpdate, RecordingFedAvg


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
    """The unlearning round of PUF as a Flower strategy (one round; recovery is plain FedAvg).

    In anyone's ServerApp, with clients named by node id::

        step = PUFRound(store, targets=[node], eta=20.0, round_offset=store.last_round)
        arrays = step.start(grid, arrays, num_rounds=1).arrays

    Parameters
    ----------
    store
        The pseudo-gradient store of training (offline targets' Δ come from it).
    targets
        The clients holding the forget data (whole clients leave: they are never sampled for a
        regular update).
    eta
        η_u, the scale of the negated pseudo-gradients.
    mode
        ``"regular"`` or ``"special"``.
    offline
        Use the targets' latest stored Δ instead of asking them to train.
    request, earlier
        fedunlearn's request served (targets train on its forget samples alone) and those served
        before it (their samples are gone for everyone); None for a whole client, whose ClientApp
        needs no more than a train message.
    **kwargs
        Passed to :class:`RecordingFedAvg`.
    """

    def __init__(self, store: PseudoGradientStore | None = None, *, targets: Sequence[int], eta: float = 20.0,
                 mode: str = "regular", offline: bool = False, request: ForgetRequest | None = None,
                 earlier: Sequence[ForgetRequest] = (), **kwargs) -> None:
        super().__init__(store, **kwargs)
        PUFSettings(eta, mode, offline).validate()
        self.targets = sorted(targets)
        self.eta = eta
        self.mode = mode
        self.offline = offline
        self.request, self.earlier = request, list(earlier)
        self.sources: dict[int, str] = {}

    def leaving(self) -> set[int]:
        if self.request is not None and self.request.kind != "client":
            return super().leaving()  # holders of some samples stay in the federation
        return super().leaving() | set(self.targets)

    def tasks(self, server_round: int) -> list[tuple[int, str]]:
        """Regular updates of the sampled remaining clients (regular mode), forget updates of the targets."""
        regular = super().tasks(server_round) if self.mode == "regular" else []
        return sorted(regular + ([] if self.offline else [(pid, FORGET) for pid in self.targets]))

    def task_config(self, partition_id: int, config: ConfigRecord, role: str) -> ConfigRecord:
        config = super().task_config(partition_id, config, role)
        if role == FORGET and self.request is not None:
            config["only"] = requests_json([self.request])
            config["exclude"] = requests_json(self.earlier)
        return config

    def combine(self, server_round: int, global_weights: Weights, updates: list[ClientUpdate]) -> Weights:
        fresh = {u.client: u for u in updates if u.role == FORGET}
        retained = [u for u in updates if u.role == REGULAR]
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

    def first_order_step(self) -> bool:
        return not self.settings.offline  # an offline target's stored Δ comes without gradient statistics

    def serves(self, kind: str) -> str:
        if self.settings.offline and kind != "client":
            return "with offline = true serves client requests only (a stored update is on all of a client's data)"
        return super().serves(kind)

    def unlearn(self, ctx: UnlearningContext) -> Weights:
        f = self.settings
        strategy = PUFRound.from_config(ctx.cfg, ctx.store, ctx.node_of, ctx.remaining, ctx.removed,
                                        targets=ctx.forgotten, eta=f.eta, mode=f.mode, offline=f.offline,
                                        request=ctx.request, earlier=ctx.earlier)
        weights = ctx.next_round(strategy, ctx.weights, "unlearn")
        ctx.notes["puf_source"] = "; ".join(f"client {p}: {s}" for p, s in sorted(strategy.sources.items()))
        return weights
