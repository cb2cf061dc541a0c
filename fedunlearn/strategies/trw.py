"""TRW fine-tuning (after Ebrahimpour-Boroojeny et al.; docs/methods.md, "Class unlearning").

The clients holding forget-class data fine-tune for ``rounds`` rounds with the client behaviour
``trw`` (``clients/trw.py``): on forget-class inputs the loss is KL(q ‖ model) towards the tilted
reweighting target q_j ∝ p_j(x)^(1/T) · S_cj^β off the forget classes (q_c = 0), p the model at the
request and S its class similarity (test set's calibration half); on their remaining data it is
cross-entropy weighted by γ. The holders' models are averaged by their sample counts; recovery
over the remaining data follows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from fedunlearn.arrays import Weights
from fedunlearn.class_unlearning import split_filter
from fedunlearn.settings import require
from fedunlearn.strategies.base import Unlearner, UnlearningContext
from fedunlearn.strategies.fedavg import FORGET, RecordingFedAvg


@dataclass
class TRWSettings:
    """``[forgetting.trw]``: temperature T, similarity exponent β, retain weight γ, fine-tuning rounds."""

    temperature: float = 1.0
    beta: float = 1.0
    gamma: float = 1.0
    rounds: int = 1

    def validate(self) -> None:
        require(self.temperature > 0, "temperature", f"must be > 0 (got {self.temperature})")
        require(self.beta >= 0, "beta", f"must be >= 0 (got {self.beta})")
        require(self.gamma >= 0, "gamma", f"must be >= 0 (got {self.gamma})")
        require(self.rounds >= 1, "rounds", f"must be >= 1 (got {self.rounds})")


class TRWRound(RecordingFedAvg):
    """One fine-tuning round of the holders with the ``trw`` behaviour."""

    behaviour = "trw"

    def __init__(self, *args, holders: list[int], original: Weights, similarity, trw: dict, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.holders, self.original, self.similarity, self.trw = holders, original, similarity, trw

    def tasks(self, server_round: int) -> list[tuple[int, str]]:
        return [(h, FORGET) for h in self.holders]

    def client_config(self, partition_id: int, config: ConfigRecord) -> ConfigRecord:
        config.update(self.trw)
        return config

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))
        for m in messages:
            m.content["original-model"] = ArrayRecord(self.original)
            m.content["similarity"] = ArrayRecord([self.similarity.astype("float32")])
        return messages


class TRW(Unlearner):
    """The holders' TRW fine-tuning; recovery follows."""

    needs_classifier = True  # its targets are class distributions

    Settings = TRWSettings
    kinds = ("class",)
    step_settings = ("temperature",)

    def unlearn(self, ctx: UnlearningContext) -> Weights:
        f, n = self.settings, len(ctx.init_weights)
        original, _ = split_filter(ctx.weights, n)
        similarity = ctx.similarity_of(ctx.weights)
        trw = {"trw-classes": json.dumps(ctx.request.classes), "trw-temperature": f.temperature,
               "trw-beta": f.beta, "trw-gamma": f.gamma}
        weights = ctx.weights
        for _ in range(f.rounds):
            strategy = TRWRound.from_config(ctx.cfg, ctx.store, ctx.node_of, ctx.forgotten, ctx.earlier,
                                            holders=ctx.forgotten, original=original, similarity=similarity, trw=trw)
            weights = ctx.next_round(strategy, weights, "unlearn")
        ctx.notes["trw"] = f"T {f.temperature}, beta {f.beta}, gamma {f.gamma}, rounds {f.rounds}"
        return weights
