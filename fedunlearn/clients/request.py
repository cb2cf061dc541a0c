"""What a behaviour is given and what it reports."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ClientRequest:
    """The round's config, this client's seed, and any extra arrays the server sent by name."""

    config: dict
    seed: int
    extra: dict[str, list[np.ndarray]] = field(default_factory=dict)


@dataclass
class LocalRun:
    """What a behaviour reports: mean train loss and local epochs run (fractions count)."""

    loss: float
    epochs: float
