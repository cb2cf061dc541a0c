"""PGA: projected gradient ascent by the target client (Halimi et al. 2022; docs/methods.md, "Forgetting").

1. Reference model from the last round's client models (equal weights), without the targets:
   w_ref = (K·w̄ − Σ_u w_u)/(K − |U|)  (for one target: (K·w̄ − w_u)/(K − 1)).
   Client models are rebuilt as w_k = w_prev + Δ_k, with w_prev, the global model sent in that
   round, recovered from the aggregate: w_prev = w_t − η_s Σ (n_k/N) Δ_k.
2. Radius δ = sqrt(mean over ``radius_inits`` random inits of ‖w_ref − w_rand‖² / 3).
3. The target runs projected gradient ascent from w_ref (client side: ``clients/ascent.py``); the
   result is the new global model. Several targets ascend one after the other, each projected
   around the same w_ref. Recovery rounds follow.

For samples and class requests (docs/methods.md, "Granularity") there is no client to average
out: w_ref = w_t, and every holder of forget data ascends on its forget samples alone from w_t in
one round, projected into the ball around w_t (the early stop measures the distance from w_t);
the new global model is the holders' models averaged by their forget-set sizes.

Settings ``[forgetting.pga]``: the ascent's ``lr``, ``momentum``, ``clip``, ``epochs``,
``distance_threshold`` and ``radius_inits``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from fedunlearn.arrays import Weights, apply_updates, l2_sq, weighted_step
from fedunlearn.config import ForgetRequest
from fedunlearn.data import federated_data
from fedunlearn.data.forget_sets import requests_json
from fedunlearn.models import build_model
from fedunlearn.settings import require
from fedunlearn.strategies.base import Unlearner, UnlearningContext, UnlearningError
from fedunlearn.strategies.fedavg import FORGET, ClientUpdate, RecordingFedAvg
from fedunlearn.training import get_weights


@dataclass
class PGASettings:
    """Projected gradient ascent by the target (Halimi et al. 2022's defaults)."""

    lr: float = 0.01
    momentum: float = 0.9
    clip: float = 5.0
    epochs: int = 5
    distance_threshold: float = 2.2
    radius_inits: int = 10

    def validate(self) -> None:
        require(self.lr > 0, "lr", f"must be > 0 (got {self.lr})")
        require(0 <= self.momentum < 1, "momentum", f"must be in [0, 1) (got {self.momentum})")
        require(self.clip > 0, "clip", f"must be > 0 (got {self.clip})")
        require(self.epochs >= 1, "epochs", f"must be >= 1 (got {self.epochs})")
        require(self.distance_threshold > 0, "distance_threshold", f"must be > 0 (got {self.distance_threshold})")
        require(self.radius_inits >= 1, "radius_inits", f"must be >= 1 (got {self.radius_inits})")


class PGARound(RecordingFedAvg):
    """One round in which only ``targets`` train, with the ascent behaviour on their forget samples, from w_ref."""

    behaviour = "ascent"

    def __init__(self, *args, targets: list[int], target_model: Weights, radius: float, pga: dict,
                 request: ForgetRequest, earlier: list[ForgetRequest], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.targets, self.target_model, self.radius, self.pga = targets, target_model, radius, pga
        self.request, self.earlier = request, earlier

    def tasks(self, server_round: int) -> list[tuple[int, str]]:
        return [(t, FORGET) for t in self.targets]

    def client_config(self, partition_id: int, config: ConfigRecord) -> ConfigRecord:
        config.update({"pga-radius": self.radius, **self.pga, "only": requests_json([self.request]),
                       "exclude": requests_json(self.earlier)})
        return config

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))
        for m in messages:
            m.content["target-model"] = ArrayRecord(self.target_model)
        return messages

    def combine(self, server_round: int, global_weights: Weights, updates: list[ClientUpdate]) -> Weights:
        """The targets' models averaged by their forget-set sizes (one target: its model)."""
        return weighted_step(global_weights, [(u.num_examples, u.delta) for u in updates], 1.0)


def reference_model(ctx: UnlearningContext) -> tuple[Weights, dict[int, Weights]]:
    """(w_ref, {target: w_u}) from the latest round's client models."""
    latest = [ctx.store.latest(p) for p in ctx.store.clients() if p in ctx.remaining or p in ctx.forgotten]
    last_round = max(pg.server_round for pg in latest)
    members = [pg for pg in latest if pg.server_round == last_round]
    missing = [u for u in ctx.forgotten if u not in {pg.partition_id for pg in members}]
    if missing or len(members) <= len(ctx.forgotten):
        raise UnlearningError(f"pga: needs the targets {missing or ctx.forgotten} and at least one other client "
                              f"to have trained in the last round ({last_round}); use train.fraction_train = 1")
    n = float(sum(pg.num_examples for pg in members))
    w_prev = apply_updates(ctx.weights, [(-ctx.cfg.train.server_lr * pg.num_examples / n, pg.delta) for pg in members])
    models = {pg.partition_id: apply_updates(w_prev, [(1.0, pg.delta)]) for pg in members}
    others = [w for p, w in models.items() if p not in ctx.forgotten]
    w_ref = apply_updates([np.zeros_like(w) for w in w_prev], [(1.0 / len(others), w) for w in others])
    return w_ref, {u: models[u] for u in ctx.forgotten}


class PGA(Unlearner):
    """The target's projected ascent from the reference model; recovery follows."""

    Settings = PGASettings
    step_settings = ("lr",)

    def first_order_step(self) -> bool:
        return True

    def radius(self, ctx: UnlearningContext, w_ref: Weights) -> float:
        data = federated_data(ctx.cfg.data, ctx.cfg.seed)
        dists = [l2_sq(w_ref, get_weights(build_model(ctx.cfg.model, data.input_shape, data.num_classes,
                                                      int(np.random.SeedSequence([ctx.cfg.seed, 7, i]).generate_state(1)[0]))))
                 for i in range(self.settings.radius_inits)]
        return float(np.sqrt(np.mean(dists) / 3.0))

    def unlearn(self, ctx: UnlearningContext) -> Weights:
        f = self.settings
        if ctx.kind == "client":
            w_ref, targets = reference_model(ctx)
            rounds = [([u], w_u) for u, w_u in targets.items()]
        else:  # nobody leaves: ascend from the current model, all holders at once
            w_ref = ctx.weights
            rounds = [(ctx.forgotten, ctx.weights)]
        radius = self.radius(ctx, w_ref)
        pga = {"pga-lr": f.lr, "pga-momentum": f.momentum, "pga-clip": f.clip,
               "pga-epochs": f.epochs, "pga-distance-threshold": f.distance_threshold}
        weights = w_ref
        for targets_of_round, target_model in rounds:
            strategy = PGARound.from_config(ctx.cfg, ctx.store, ctx.node_of, targets_of_round, targets=targets_of_round,
                                            target_model=target_model, radius=radius, pga=pga, request=ctx.request,
                                            earlier=ctx.earlier)
            weights = ctx.next_round(strategy, weights, "unlearn")
        ctx.notes["pga_radius"] = f"{radius:.4f}"
        return weights
