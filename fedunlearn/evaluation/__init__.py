"""Server-side evaluation of global models: the simulator's oracle view of every client's data."""

from fedunlearn.evaluation.scorer import Scorer

__all__ = ["Scorer"]
