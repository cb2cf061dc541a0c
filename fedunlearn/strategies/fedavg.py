"""RecordingFedAvg: Flower's FedAvg that keeps every client's pseudo-gradient.

Differences from :class:`flwr.serverapp.strategy.FedAvg`, each for a reason:

* clients are addressed by partition id (node ids are random per run), sampled with a generator
  seeded by (seed, round), and only from the clients currently in the federation;
* replies are sorted by partition id before anything is summed, so results do not depend on the
  order Ray returns them (floating-point sums are not associative);
* aggregation happens in pseudo-gradient space, w_{t+1} = w_t + η_s Σ_k (n_k/N) Δ_k, and every Δ_k
  is recorded in a :class:`~fedunlearn.store.PseudoGradientStore`;
* error replies are counted per round, and a round with fewer successes than ``min_train_nodes``
  stops the run with :class:`TooFewClientsError`.

Subclasses change one thing: :attr:`behaviour` (the client behaviour asked for, sent as the Flower
message type ``train.<behaviour>``), :meth:`tasks` (which clients train, and on what: a regular
update on the data that remains, or one on a forget request's samples alone), :meth:`client_config`
(settings a client is sent; :meth:`task_config` adds what a role asks for) or :meth:`combine` (how the round's pseudo-gradients move the global
weights).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedunlearn.arrays import Weights, weighted_step
from fedunlearn.config import ExperimentConfig, ForgetRequest, config_to_dict
from fedunlearn.data.forget_sets import requests_json
from fedunlearn.flower.runtime import error_summary
from fedunlearn.store import PseudoGradientStore


class TooFewClientsError(RuntimeError):
    """A round returned fewer successful replies than the configured minimum."""


REGULAR, FORGET = "", "forget"  # the roles of a client's update: on what remains, on forget samples alone


@dataclass
class ClientUpdate:
    """One successful reply, as the aggregation sees it (``role``: :data:`REGULAR` or :data:`FORGET`)."""

    partition_id: int
    num_examples: int
    delta: Weights
    metrics: dict
    role: str = REGULAR


@dataclass
class RoundReport:
    """What happened in the last aggregated round (written to rounds.csv by the caller)."""

    server_round: int = 0
    sampled: list[int] = field(default_factory=list)
    succeeded: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    train_loss: float = float("nan")
    client_epochs: float = 0.0
    bytes_exchanged: int = 0


class RecordingFedAvg(FedAvg):
    """FedAvg over partition ids that records pseudo-gradients and aggregates in sorted order.

    Parameters
    ----------
    store
        Where each reply's pseudo-gradient is recorded.
    node_of
        Map from partition id to the node id that holds it in this simulation.
    participants
        Partition ids currently in the federation (forgotten clients are removed from it).
    seed
        Seeds client sampling (per round) and the clients' local runs.
    base_config
        Sent to every client each round (the federation spec and the local recipe).
    exclude
        Forget requests in effect: every client trains on its data without their samples.
    fraction_train, min_train_nodes
        As in FedAvg; ``min_train_nodes = 0`` requires every sampled client to succeed.
    server_lr
        η_s in w_{t+1} = w_t + η_s Σ (n_k/N) Δ_k.
    """

    behaviour = ""  # the client behaviour of every message; "" is plain local training

    def __init__(self, store: PseudoGradientStore, node_of: dict[int, int], participants: Sequence[int],
                 seed: int, base_config: dict, fraction_train: float = 1.0, min_train_nodes: int = 0,
                 server_lr: float = 1.0, exclude: Sequence[ForgetRequest] = ()) -> None:
        super().__init__(fraction_train=fraction_train, fraction_evaluate=0.0, min_train_nodes=min_train_nodes,
                         min_available_nodes=len(node_of))
        self.store = store
        self.node_of = dict(node_of)
        self.partition_of = {n: p for p, n in self.node_of.items()}
        self.participants = sorted(participants)
        self.seed = seed
        self.base_config = dict(base_config)
        self.exclude = list(exclude)
        if self.exclude:
            self.base_config["exclude"] = requests_json(self.exclude)
        self.server_lr = server_lr
        self.report = RoundReport()
        self._global: Weights = []
        self._sent: list[tuple[Message, str]] = []

    # -- which clients, asked to do what ---------------------------------------------------
    def sample(self, server_round: int) -> list[int]:
        """Partition ids trained this round: a seeded sample of the participants, sorted."""
        k = max(1, int(round(self.fraction_train * len(self.participants))))
        if k >= len(self.participants):
            return list(self.participants)
        rng = np.random.default_rng([self.seed, server_round])
        return sorted(int(p) for p in rng.choice(self.participants, size=k, replace=False))

    def tasks(self, server_round: int) -> list[tuple[int, str]]:
        """(partition id, role) of every update asked for this round: a regular one per sampled client."""
        return [(pid, REGULAR) for pid in self.sample(server_round)]

    def client_config(self, partition_id: int, config: ConfigRecord) -> ConfigRecord:
        """The config one client receives; subclasses ask particular clients for other behaviours."""
        return config

    def task_config(self, partition_id: int, config: ConfigRecord, role: str) -> ConfigRecord:
        """The config of one task: :meth:`client_config`, and what a role asks for (subclasses)."""
        return self.client_config(partition_id, config)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """One train message per task; remembers the global weights sent and which message asked what."""
        self._global = arrays.to_numpy_ndarrays()
        tasks = self.tasks(server_round)
        self.report = RoundReport(server_round=server_round, sampled=[pid for pid, _ in tasks])
        base = ConfigRecord({**self.base_config, **dict(config), "server-round": server_round, "seed": self.seed})
        message_type = f"{MessageType.TRAIN}.{self.behaviour}" if self.behaviour else MessageType.TRAIN
        self._sent = []
        for pid, role in tasks:
            content = RecordDict({self.arrayrecord_key: arrays,
                                  self.configrecord_key: self.task_config(pid, ConfigRecord(dict(base)), role)})
            self._sent.append((Message(content=content, message_type=message_type, dst_node_id=self.node_of[pid]),
                               role))
        return [m for m, _ in self._sent]

    def _roles(self) -> dict[str, str]:
        """Message id -> role of every message sent this round (the grid sets the ids as it pushes them)."""
        return {m.metadata.message_id: role for m, role in self._sent if m.metadata.message_id}

    # -- what to do with the replies -------------------------------------------------------
    def collect(self, server_round: int, replies: Iterable[Message]) -> list[ClientUpdate]:
        """Sort successful replies by partition id, record their Δ, count failures."""
        replies = list(replies)
        valid = [m for m in replies if not m.has_error() and self._well_formed(m)]
        accepted = {id(m) for m in valid}
        self.report.failures = [f"client {self.partition_of.get(m.metadata.src_node_id, '?')}: "
                                + (error_summary(m.error.reason) if m.has_error() else
                                   "reply without one ArrayRecord and a MetricRecord with num-examples and partition-id")
                                for m in replies if id(m) not in accepted]
        required = self.min_train_nodes or len(self.report.sampled)
        if len(valid) < required:
            raise TooFewClientsError(
                f"train.min_train_clients: in round {server_round} {len(valid)} of {len(self.report.sampled)} "
                f"sampled clients succeeded, {required} required ({'; '.join(self.report.failures[:3])}"
                f"{' ...' if len(self.report.failures) > 3 else ''}); fix the failing clients or lower "
                "train.min_train_clients (0 requires every sampled client)"
            )
        updates, roles = [], self._roles()
        for msg in valid:
            metrics = dict(next(iter(msg.content.metric_records.values())))
            weights = msg.content[self.arrayrecord_key].to_numpy_ndarrays()
            delta = [w - g for w, g in zip(weights, self._global, strict=True)]
            updates.append(ClientUpdate(int(metrics["partition-id"]), int(metrics["num-examples"]), delta, metrics,
                                        roles.get(msg.metadata.reply_to_message_id, REGULAR)))
        updates.sort(key=lambda u: (u.partition_id, u.role))
        for u in updates:
            if u.role == REGULAR:  # the store keeps each client's regular updates
                self.store.record(u.partition_id, server_round, u.num_examples, u.delta)
        model_bytes = sum(g.nbytes for g in self._global)
        self.report.succeeded = [u.partition_id for u in updates]
        self.report.client_epochs = float(sum(u.metrics.get("local-epochs", 0.0) for u in updates))
        self.report.bytes_exchanged = model_bytes * (len(self.report.sampled) + len(updates))
        n = sum(u.num_examples for u in updates)
        self.report.train_loss = float(sum(u.metrics["train-loss"] * u.num_examples for u in updates) / n)
        return updates

    def _well_formed(self, msg: Message) -> bool:
        """A train reply as Flower's convention has it: one ArrayRecord and a MetricRecord with the counts."""
        metrics = list(msg.content.metric_records.values())
        return (self.arrayrecord_key in msg.content.array_records and len(metrics) == 1
                and {"num-examples", "partition-id"} <= set(metrics[0].keys()))

    def combine(self, server_round: int, global_weights: Weights, updates: list[ClientUpdate]) -> Weights:
        """FedAvg in pseudo-gradient space: w + η_s Σ (n_k/N) Δ_k, summed in partition-id order."""
        return weighted_step(global_weights, [(u.num_examples, u.delta) for u in updates], self.server_lr)

    @classmethod
    def from_config(cls, cfg: ExperimentConfig, store: PseudoGradientStore, node_of: dict[int, int],
                    participants: Sequence[int], exclude: Sequence[ForgetRequest] = (), **kwargs) -> RecordingFedAvg:
        """The experiment's FedAvg recipe over ``participants`` (extra kwargs go to subclasses)."""
        t = cfg.train
        return cls(store, node_of, participants, cfg.seed, local_recipe(cfg), t.fraction_train, t.min_train_clients,
                   t.server_lr, exclude, **kwargs)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        updates = self.collect(server_round, replies)
        new = self.combine(server_round, self._global, updates)
        metrics = MetricRecord({"train-loss": self.report.train_loss, "clients": len(updates),
                                "failures": len(self.report.failures)})
        return ArrayRecord(new), metrics


def federation_spec(cfg: ExperimentConfig) -> str:
    """What a client needs to rebuild its data and model, as the JSON string clients cache on."""
    raw = config_to_dict(cfg)
    return json.dumps({"seed": cfg.seed, "data": raw["data"], "model": raw["model"]}, sort_keys=True)


def local_recipe(cfg: ExperimentConfig) -> dict:
    """The config every training client receives: federation spec and local SGD recipe."""
    t = cfg.train
    return {"federation": federation_spec(cfg), "local-epochs": t.local_epochs,
            "batch-size": t.batch_size, "lr": t.lr, "momentum": t.momentum}
