"""A model that reports where it runs: which Ray node, which process, how many samples it trained on.

``tests/test_ray_cluster.py`` names it by import path (``model.name = "tests.parts.ray_probe:recording_mlp"``)
and gives it a log file (``model."tests.parts.ray_probe:recording_mlp".log = "/tmp/.../where.jsonl"``).
Every process that builds the model appends one ``build`` line; every training batch appends one
``train`` line with its size. Each line carries the process id, the ``FEDUNLEARN_RAY_NODE`` tag of
the environment the process inherited (a tag the test gives each ``ray start``), and, inside a Ray
worker, the Ray node id and actor id. The driver's own copy (the server's evaluation model) writes
lines too, without an actor id.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
from torch import nn

from fedunlearn.models import HiddenWidth, mlp
from fedunlearn.settings import require

NODE_TAG = "FEDUNLEARN_RAY_NODE"


@dataclass
class RecordingSettings:
    log: str = ""
    hidden: int = 16

    def validate(self) -> None:
        require(bool(self.log), "log", "must name the file the model appends its records to")
        require(self.hidden >= 1, "hidden", f"must be >= 1 (got {self.hidden})")


def where() -> dict:
    """This process: its id, its node tag and, inside a Ray worker, the Ray node and actor ids."""
    record = {"pid": os.getpid(), "tag": os.environ.get(NODE_TAG), "node": None, "actor": None}
    try:
        import ray

        if ray.is_initialized():
            ctx = ray.get_runtime_context()
            record["node"], record["actor"] = ctx.get_node_id(), ctx.get_actor_id()
    except Exception:  # noqa: BLE001 - a record without Ray ids still says which process wrote it
        pass
    return record


class Recording(nn.Module):
    """``inner`` with a line appended to ``log`` per training batch (and one when built)."""

    def __init__(self, inner: nn.Module, log: str) -> None:
        super().__init__()
        self.inner, self.log = inner, log
        self._where: dict | None = None
        self._append("build", 0)

    def _append(self, event: str, n: int) -> None:
        if self._where is None or self._where["node"] is None:
            self._where = where()  # the model may be built before Ray is up (the driver's copy)
        with open(self.log, "a") as fh:  # one short write per line: O_APPEND keeps lines whole
            fh.write(json.dumps({"event": event, "n": n, **self._where}) + "\n")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self._append("train", int(x.shape[0]))
        return self.inner(x)


def recording_mlp(input_shape: tuple[int, ...], num_classes: int, settings: RecordingSettings) -> nn.Module:
    """fedunlearn's ``mlp`` (hidden width ``settings.hidden``) wrapped in :class:`Recording`."""
    return Recording(mlp(input_shape, num_classes, HiddenWidth(settings.hidden)), settings.log)


recording_mlp.Settings = RecordingSettings
