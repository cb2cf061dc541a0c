"""Output filter (after MPRU, Peng et al.; docs/methods.md, "Class unlearning"): class requests only.

The server appends a projection-redistribution layer to the model: the forget classes' probability
goes to the remaining classes, ``proportional`` to their own probability (renormalisation) or by
``similarity`` (the class-similarity matrix of the model at the request, estimated on the test
set's calibration half). No data, no rounds, no recovery. The network underneath is unchanged:
clients keep training it, and the relearning probe trains and scores it without the filter.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedunlearn.arrays import Weights
from fedunlearn.class_unlearning import (
    REDISTRIBUTIONS,
    filter_matrix,
    split_filter,
    with_filter,
)
from fedunlearn.settings import require
from fedunlearn.strategies.base import Unlearner, UnlearningContext


@dataclass
class OutputFilterSettings:
    """``[forgetting.output-filter]``: how the forget classes' probability is redistributed."""

    redistribution: str = "similarity"

    def validate(self) -> None:
        require(self.redistribution in REDISTRIBUTIONS, "redistribution",
                f"must be one of {', '.join(REDISTRIBUTIONS)} (got {self.redistribution!r})")


class OutputFilter(Unlearner):
    """Append (or compose) the output filter for the request's classes."""

    needs_classifier = True  # it filters class probabilities

    Settings = OutputFilterSettings
    recovers = False
    kinds = ("class",)

    def unlearn(self, ctx: UnlearningContext) -> Weights:
        n = len(ctx.init_weights)
        network, before = split_filter(ctx.weights, n)
        similarity = ctx.similarity_of(ctx.weights)
        matrix = filter_matrix(ctx.request.classes, len(similarity), self.settings.redistribution, similarity)
        ctx.notes["output_filter"] = f"{self.settings.redistribution}, classes {ctx.request.classes}"
        return with_filter(network, matrix if before is None else before @ matrix)
