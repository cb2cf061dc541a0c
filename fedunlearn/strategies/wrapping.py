"""Flower strategies that wrap another one, the way Flower's ``DifferentialPrivacyServerSideFixedClipping`` does.

:class:`StrategyWrapper` hands every call to the inner strategy; a subclass overrides the one step
it changes. :class:`WithClientConfig` adds settings to every train message the inner strategy
sends (augmentation during unlearning, IEU's client-side step).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedunlearn.strategies.fedavg import RecordingFedAvg


class StrategyWrapper(Strategy):
    """A strategy that does what ``inner`` does (subclasses change one step).

    Parameters
    ----------
    inner
        The wrapped strategy (a :class:`RecordingFedAvg` or another wrapper around one).
    """

    def __init__(self, inner: RecordingFedAvg | StrategyWrapper) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        """What the wrapper does not define (``report``, ``clock``, ``store``...) is the inner strategy's."""
        if name == "inner":  # not set yet (e.g. while unpickling): no inner to ask
            raise AttributeError(name)
        return getattr(self.inner, name)

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.inner.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)


class WithClientConfig(StrategyWrapper):
    """``inner``, with ``config`` added to the config of every train message it sends.

    In anyone's ServerApp: ``WithClientConfig(FedAvg(), {"augment": "rand-augment"}).start(...)``
    asks a ClientApp that reads the key for it.
    """

    def __init__(self, inner: RecordingFedAvg | StrategyWrapper, config: dict) -> None:
        super().__init__(inner)
        self.config = dict(config)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))
        for m in messages:
            add_config(m, self.config)
        return messages


def add_config(message: Message, config: dict) -> None:
    """Add ``config`` to ``message``'s ConfigRecord ``"config"`` (created when the strategy sent none)."""
    sent = message.content.config_records.get("config")
    message.content["config"] = ConfigRecord({**(dict(sent) if sent is not None else {}), **config})
