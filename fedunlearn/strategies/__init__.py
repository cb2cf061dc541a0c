"""Server strategies, one file each; :data:`STRATEGIES` maps names to classes."""

from fedunlearn.strategies.fedavg import (
    ClientUpdate,
    RecordingFedAvg,
    RoundReport,
    TooFewClientsError,
    weighted_step,
)

STRATEGIES: dict[str, type[RecordingFedAvg]] = {
    "fedavg": RecordingFedAvg,
}

__all__ = ["STRATEGIES", "ClientUpdate", "RecordingFedAvg", "RoundReport", "TooFewClientsError", "weighted_step"]
