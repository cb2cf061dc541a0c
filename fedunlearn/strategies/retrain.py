"""Retrain from scratch: the exact-unlearning reference every metric is compared with.

FedAvg from the training run's initial weights, over the clients never forgotten, for
``train.rounds`` rounds, with the same seeds (client sampling and local runs are seeded by round
and client, so each remaining client's randomness matches the original run's).
"""

from __future__ import annotations

from fedunlearn.arrays import Weights
from fedunlearn.strategies.base import Unlearner, UnlearningContext


class Retrain(Unlearner):
    """Exact unlearning: the whole training again without the forgotten clients."""

    recovers = False
    from_scratch = True

    def unlearn(self, ctx: UnlearningContext) -> Weights:
        weights, ctx.clock = ctx.init_weights, 0
        strategy = ctx.fedavg()
        for _ in range(ctx.cfg.train.rounds):
            weights = ctx.next_round(strategy, weights, "retrain")
        return weights
