"""Natural forgetting / fine-tuning: FedAvg over the remaining clients, no unlearning step."""

from __future__ import annotations

from dataclasses import dataclass

from fedunlearn.arrays import Weights
from fedunlearn.settings import require
from fedunlearn.strategies.base import Unlearner, UnlearningContext


@dataclass
class NaturalSettings:
    """``[forgetting.natural]``: how many FedAvg rounds the remaining clients run."""

    rounds: int = 5

    def validate(self) -> None:
        require(self.rounds >= 0, "rounds", f"must be >= 0 (got {self.rounds})")


class Natural(Unlearner):
    """``rounds`` rounds of FedAvg over the remaining clients; no recovery phase after."""

    Settings = NaturalSettings
    recovers = False

    def unlearn(self, ctx: UnlearningContext) -> Weights:
        weights = ctx.weights
        for _ in range(self.settings.rounds):
            weights = ctx.next_round(ctx.fedavg(), weights, "unlearn")
        return weights
