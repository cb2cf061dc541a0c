"""What a behaviour is given and what it reports."""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedunlearn.training import Objective, cross_entropy


@dataclass
class ClientRequest:
    """The round's config, this client's seed, and any extra arrays the server sent by name.

    ``objective`` is the task's batch loss for this run (cross-entropy for classification; the
    generative task's contrastive divergence, seeded from the round). ``state`` is the node's Flower ``Context.state`` (a RecordDict, kept per node across the
    messages of a run): what a behaviour must carry from one round to the next (the probe's
    momentum). Values put there must be Flower records.
    """

    config: dict
    seed: int
    extra: dict[str, list[np.ndarray]] = field(default_factory=dict)
    state: MutableMapping[str, Any] = field(default_factory=dict)
    objective: Objective = cross_entropy


@dataclass
class LocalRun:
    """What a behaviour reports: mean train loss and local epochs run (fractions count), and any
    extra arrays (sent back as ArrayRecords by name) and metrics for the server."""

    loss: float
    epochs: float
    arrays: dict[str, list[np.ndarray]] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
