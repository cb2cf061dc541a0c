"""Server strategies, one file each.

:class:`RecordingFedAvg` is the federation's FedAvg; :data:`STRATEGIES` maps the name of every
unlearning strategy to its class (adding one is a new file and one line here).
"""

from fedunlearn.strategies.base import Unlearner, UnlearningContext, UnlearningError
from fedunlearn.strategies.fedavg import (
    ClientUpdate,
    RecordingFedAvg,
    RoundReport,
    TooFewClientsError,
    apply_updates,
    weighted_step,
)
from fedunlearn.strategies.federaser import FedEraser
from fedunlearn.strategies.ieu import with_ieu
from fedunlearn.strategies.natural import Natural
from fedunlearn.strategies.pga import PGA
from fedunlearn.strategies.puf import PUF
from fedunlearn.strategies.retrain import Retrain

STRATEGIES: dict[str, type[Unlearner]] = {
    "retrain": Retrain,
    "natural": Natural,
    "puf": PUF,
    "puf-ieu": with_ieu(PUF),
    "pga": PGA,
    "federaser": FedEraser,
}

__all__ = ["STRATEGIES", "ClientUpdate", "RecordingFedAvg", "RoundReport", "TooFewClientsError", "UnlearningContext",
           "UnlearningError", "Unlearner", "apply_updates", "weighted_step"]
