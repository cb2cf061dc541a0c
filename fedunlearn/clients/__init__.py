"""Client behaviours: what a ClientApp does with the global model it is sent.

A behaviour takes the model (already holding the received weights), the client's data and the
:class:`ClientRequest` (config, seed, extra arrays); it changes the model in place and returns a
:class:`LocalRun`. Each behaviour is a Flower message type: the one registered as ``"ascent"``
answers messages of type ``train.ascent`` (``@app.train("ascent")``), and ``"default"`` answers
plain ``train`` messages. Adding one is one file here and one line below.
"""

from __future__ import annotations

from fedunlearn.clients.ascent import ascent_behaviour
from fedunlearn.clients.influence import hvp_behaviour, lossgrad_behaviour
from fedunlearn.clients.probe import probe_behaviour
from fedunlearn.clients.request import ClientRequest, LocalRun
from fedunlearn.clients.train import train_behaviour
from fedunlearn.clients.trw import trw_behaviour
from fedunlearn.registry import Registry

BEHAVIOURS: Registry = Registry("client behaviour", "message type")
BEHAVIOURS.register("default", train_behaviour)
BEHAVIOURS.register("ascent", ascent_behaviour)
BEHAVIOURS.register("trw", trw_behaviour)
BEHAVIOURS.register("probe", probe_behaviour)
BEHAVIOURS.register("hvp", hvp_behaviour)
BEHAVIOURS.register("lossgrad", lossgrad_behaviour)

__all__ = ["BEHAVIOURS", "ClientRequest", "LocalRun"]
