"""Client behaviours: what a ClientApp does with the global model it is sent.

A behaviour takes the model (already holding the global weights), the client's data, the round's
config and a seed; it changes the model in place and returns what it did. Adding a behaviour is one
file here and one line in :data:`BEHAVIOURS`; the server picks it per message with the config key
``behaviour``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from fedunlearn.clients.train import LocalRun, train_behaviour
from fedunlearn.data import ClientData

Behaviour = Callable[[nn.Module, ClientData, dict, int], LocalRun]

BEHAVIOURS: dict[str, Behaviour] = {
    "train": train_behaviour,
}

__all__ = ["BEHAVIOURS", "Behaviour", "LocalRun"]
