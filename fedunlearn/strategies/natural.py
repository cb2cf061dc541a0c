"""Natural forgetting / fine-tuning: FedAvg over the remaining clients, no unlearning step."""

from __future__ import annotations

from fedunlearn.strategies.base import Unlearner, UnlearningContext
from fedunlearn.strategies.fedavg import Weights


class Natural(Unlearner):
    """``natural_rounds`` rounds of FedAvg over the remaining clients; no recovery phase after."""

    name = "natural"
    recovers = False

    def unlearn(self, ctx: UnlearningContext) -> Weights:
        weights = ctx.weights
        for _ in range(self.cfg.natural_rounds):
            weights = ctx.next_round(ctx.fedavg(), weights, "unlearn")
        return weights
