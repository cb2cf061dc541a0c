"""Client behaviours: what a ClientApp does with the global model it is sent.

A behaviour takes the model (already holding the received weights), the client's data and the
:class:`ClientRequest` (config, seed, extra arrays); it changes the model in place and returns a
:class:`LocalRun`. Adding a behaviour is one file here and one line in :data:`BEHAVIOURS`; the
server picks it per message with the config key ``behaviour``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from fedunlearn.clients.ascent import ascent_behaviour
from fedunlearn.clients.request import ClientRequest, LocalRun
from fedunlearn.clients.train import train_behaviour
from fedunlearn.data import ClientData

Behaviour = Callable[[nn.Module, ClientData, ClientRequest], LocalRun]

BEHAVIOURS: dict[str, Behaviour] = {
    "train": train_behaviour,
    "ascent": ascent_behaviour,
}

__all__ = ["BEHAVIOURS", "Behaviour", "ClientRequest", "LocalRun"]
