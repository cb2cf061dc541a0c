"""fedunlearn in anyone's Flower ServerApp: the public API (docs/flower-api.md).

Every name here is usable with Flower's own ``Strategy.start`` and any ClientApp that follows
Flower's conventions (a train reply holds one ArrayRecord and a MetricRecord with
``num-examples``); fedunlearn's own runner uses the same classes.

* :class:`RecordingFedAvg`: FedAvg that records every client's pseudo-gradient in a
  :class:`PseudoGradientStore` and aggregates in client order;
* :class:`PUFRound`: PUF's unlearning round (regular, special, offline);
* :class:`IEUServerSide`, :class:`IEUClientSide`: IEU's decay and noise around any strategy's
  aggregate, or in its clients' local steps;
* :class:`FeasibleUpdateMask`: feasible-update masking of an unlearning round;
  :class:`WithClientConfig`: settings added to every train message (augmentation);
* :func:`relearning_probe` (:class:`ProbeDivergedError` when relearning diverges), :func:`evaluate_on_nodes`,
  :func:`node_metrics`, :func:`threshold`:
  the relearning-delay probe on a grid, measured where the forget data lives;
* :func:`write_comparison`: the results in the layout ``fedunlearn report`` and
  :func:`~fedunlearn.report.draw_all` read.
"""

from fedunlearn.evaluation.probe import ProbeResult, threshold
from fedunlearn.evaluation.relearning import (
           ProbeDivergedError,
           evaluate_on_nodes,
           node_metrics,
           relearning_probe,
)
from fedunlearn.phases.compare import write_comparison
from fedunlearn.store import PseudoGradientStore
from fedunlearn.strategies.fedavg import RecordingFedAvg, TooFewClientsError, wait_for_nodes
from fedunlearn.strategies.ieu import IEUClientSide, IEUServerSide
from fedunlearn.strategies.mask import FeasibleUpdateMask
from fedunlearn.strategies.puf import PUFRound
from fedunlearn.strategies.wrapping import WithClientConfig

__all__ = ["FeasibleUpdateMask", "IEUClientSide", "IEUServerSide", "ProbeResult", "PUFRound", "PseudoGradientStore", "RecordingFedAvg", "TooFewClientsError",
           "ProbeDivergedError", "WithClientConfig", "evaluate_on_nodes", "node_metrics", "relearning_probe", "threshold", "wait_for_nodes",
           "write_comparison"]
