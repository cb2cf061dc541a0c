"""Dilution on the server: any Flower strategy with a fixed sparsity mask held (docs/methods.md, "Dilution").

:class:`Diluted` wraps the strategy of every round fedunlearn runs (training, unlearning, recovery,
regular rounds, retrain, the probe), outermost, so whatever the inner strategy or its wrappers do
in aggregation (PUF's step, IEU's server-side noise, feasible-update masking, FedEraser's
calibration), the round's result has its pruned coordinates at exactly 0. The mask itself is
:mod:`fedunlearn.dilution`'s.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from fedunlearn.arrays import record_like
from fedunlearn.dilution import MASK_RECORD, Mask, apply, shaped_like
from fedunlearn.strategies.fedavg import RecordingFedAvg
from fedunlearn.strategies.wrapping import StrategyWrapper


class Diluted(StrategyWrapper):
    """``inner`` with ``mask`` held: on the weights sent, in the clients' local steps, on the replies and the aggregate.

    * The weights sent are masked, and every train message carries the mask as the ArrayRecord
      :data:`~fedunlearn.dilution.MASK_RECORD` (one bool per weight, a quarter of the float32
      model's bytes); the ClientApp holds it after every local optimiser step. The mask is fixed,
      so a deployment would send it once per client: it is not counted in ``bytes_exchanged``,
      which counts model bytes.
    * Every ArrayRecord of a reply shaped like the model is a vector in weight space (the client's
      weights, feasible-update masking's gradient statistics, the influence strategy's
      Hessian-vector products and loss gradients) and is masked before the inner strategy reads
      it: pruned coordinates have zero pseudo-gradient in the store whatever a client sends, and
      the influence strategy's conjugate gradient runs in the kept coordinates.
    * The inner strategy's aggregate is masked, after whatever it and its wrappers did.

    In anyone's ServerApp: ``Diluted(FedAvg(), mask).start(grid, arrays, num_rounds=3)``.

    Parameters
    ----------
    inner
        The strategy (any Flower strategy whose messages hold the weights as ``"arrays"``).
    mask
        One boolean array per weight tensor (state-dict order), True where kept.
    """

    def __init__(self, inner: RecordingFedAvg | StrategyWrapper, mask: Mask) -> None:
        super().__init__(inner)
        self.mask = [np.asarray(m, dtype=bool) for m in mask]
        self._record = ArrayRecord(self.mask)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        arrays = record_like(arrays, apply(arrays.to_numpy_ndarrays(), self.mask))
        messages = list(super().configure_train(server_round, arrays, config, grid))
        for m in messages:
            m.content[MASK_RECORD] = self._record  # not model bytes: see the class docstring
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = super().aggregate_train(server_round, [self._held(m) for m in replies])
        if arrays is None:
            return arrays, metrics
        return record_like(arrays, apply(arrays.to_numpy_ndarrays(), self.mask)), metrics

    def _held(self, reply: Message) -> Message:
        """``reply`` with every ArrayRecord shaped like the model masked (in place)."""
        if reply.has_error():
            return reply
        for name, record in list(reply.content.array_records.items()):
            arrays = record.to_numpy_ndarrays()
            if shaped_like(arrays, self.mask):
                reply.content[name] = record_like(record, apply(arrays, self.mask))
        return reply


def diluted(strategy, mask: Mask | None):
    """``strategy`` wrapped in :class:`Diluted` (as it is when ``mask`` is None: a dense model)."""
    return strategy if mask is None else Diluted(strategy, mask)
