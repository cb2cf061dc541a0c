"""Augmentation during unlearning and recovery (after Falcao & Cordeiro; docs/methods.md, "Augmentation").

``puf+augment`` (any strategy ``+augment``): the clients' local batches are augmented with
``[forgetting.augment] policy`` (torchvision's TrivialAugmentWide by default) in the unlearning
rounds and the recovery rounds, never in the original training. The relearning probe is not augmented: it relearns every
model with the same recipe, so delays stay comparable.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedunlearn.arrays import Weights
from fedunlearn.augmentation import POLICIES
from fedunlearn.config import ExperimentConfig
from fedunlearn.data import source_dataset
from fedunlearn.settings import require
from fedunlearn.strategies.base import UnlearnerWrapper, UnlearningContext
from fedunlearn.strategies.wrapping import WithClientConfig


@dataclass
class AugmentSettings:
    """The augmentation policy, a name of :data:`fedunlearn.augmentation.POLICIES`."""

    policy: str = "trivial-augment-wide"

    def validate(self) -> None:
        require(self.policy in POLICIES, "policy", f"must be one of {sorted(POLICIES)} (got {self.policy!r})")


class Augment(UnlearnerWrapper):
    """Any unlearner, its clients' batches augmented in the unlearning and recovery rounds."""

    needs_classifier = True  # its photo policies would make binary data grey; its tests read class outputs

    Settings = AugmentSettings

    def refuses(self, cfg: ExperimentConfig) -> str:
        shape = source_dataset(cfg.data, cfg.seed).input_shape
        if len(shape) != 3:
            return (f"augments images (channels, height, width), and data.name = {cfg.data.name!r} has inputs of "
                    f"shape {shape}")
        return super().refuses(cfg)

    def augmented(self, strategy) -> WithClientConfig:
        return WithClientConfig(strategy, {"augment": self.settings.policy})

    def unlearn(self, ctx: UnlearningContext) -> Weights:
        ctx.notes["augment"] = self.settings.policy
        with ctx.rounds_wrapped(self.augmented):
            return self.inner.unlearn(ctx)

    def recovery_strategy(self, ctx: UnlearningContext, recovery_round: int):
        return self.augmented(self.inner.recovery_strategy(ctx, recovery_round))
