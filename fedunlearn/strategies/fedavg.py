"""RecordingFedAvg: Flower's FedAvg that keeps every client's pseudo-gradient.

It is a Flower ``Strategy``: ``strategy.start(grid, initial_arrays, num_rounds)`` in any ServerApp
whose ClientApp follows Flower's conventions (a train reply holds one ArrayRecord and one
MetricRecord with ``num-examples``). Differences from :class:`flwr.serverapp.strategy.FedAvg`, each
for a reason:

* clients are named by node id, or by partition id when a ``node_of`` map is given (fedunlearn's
  own runner: node ids are random per run, partition ids are not); they are sampled with a
  generator seeded by (seed, round), and only from the clients currently in the federation;
* replies are sorted by client before anything is summed, so results do not depend on the order
  replies arrive in (floating-point sums are not associative);
* aggregation happens in pseudo-gradient space, w_{t+1} = w_t + η_s Σ_k (n_k/N) Δ_k, and every Δ_k
  is recorded in a :class:`~fedunlearn.store.PseudoGradientStore`;
* rounds are numbered on one clock across phases: ``round_offset + server_round`` is the round the
  store records and clients are seeded with, so phases run one after another with
  ``Strategy.start`` (which numbers its rounds from 1) never reuse a round;
* error replies are counted per round, and a round with fewer successes than ``min_train_nodes``
  stops the run with :class:`TooFewClientsError`.

Subclasses change one thing: :attr:`behaviour` (the client behaviour asked for, sent as the Flower
message type ``train.<behaviour>``), :meth:`tasks` (which clients train, and on what: a regular
update on the data that remains, or one on a forget request's samples alone), :meth:`client_config`
(settings a client is sent; :meth:`task_config` adds what a role asks for) or :meth:`combine` (how
the round's pseudo-gradients move the global weights).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedunlearn.arrays import Weights, record_like, weighted_step
from fedunlearn.config import ExperimentConfig, ForgetRequest, config_to_dict
from fedunlearn.data.forget_sets import requests_json
from fedunlearn.flower.runtime import error_summary, train_reply_problem
from fedunlearn.store import PseudoGradientStore


class TooFewClientsError(RuntimeError):
    """A round returned fewer successful replies than the configured minimum."""


REGULAR, FORGET = "", "forget"  # the roles of a client's update: on what remains, on forget samples alone


@dataclass
class ClientUpdate:
    """One successful reply, as the aggregation sees it.

    ``client`` is the partition id or node id (see :class:`RecordingFedAvg`); ``role`` is
    :data:`REGULAR` or :data:`FORGET`; ``extra`` holds any other ArrayRecord of the reply by name
    (e.g. the gradient statistics of feasible-update masking).
    """

    client: int
    num_examples: int
    delta: Weights
    metrics: dict
    role: str = REGULAR
    extra: dict[str, Weights] = field(default_factory=dict)


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
    """FedAvg that records pseudo-gradients and aggregates in client order.

    Parameters
    ----------
    store
        Where each reply's pseudo-gradient is recorded (a fresh in-memory store when None).
    fraction_train, min_train_nodes
        As in FedAvg; ``min_train_nodes = 0`` requires every sampled client to succeed.
    fraction_evaluate, min_evaluate_nodes, min_available_nodes
        As in FedAvg; federated evaluation samples from the participants only.
    participants
        The clients currently in the federation (forgotten ones removed). None: every client the
        grid knows (or ``node_of`` names) except those in ``absent``.
    absent
        Clients that left the federation, when ``participants`` is None.
    node_of
        Partition id -> node id. Given, clients are named (stored, sampled, ordered) by partition
        id; None, by node id.
    seed
        Seeds client sampling (per round) and is sent to clients as ``seed``.
    base_config
        Sent to every client each round, before ``start``'s ``train_config``.
    exclude
        fedunlearn's forget requests in effect: its clients train without their samples.
    server_lr
        η_s in w_{t+1} = w_t + η_s Σ (n_k/N) Δ_k.
    round_offset
        Added to ``start``'s round numbers (see the module docstring).
    """

    behaviour = ""  # the client behaviour of every message; "" is plain local training

    def __init__(self, store: PseudoGradientStore | None = None, *, fraction_train: float = 1.0,
                 min_train_nodes: int = 0, fraction_evaluate: float = 0.0, min_evaluate_nodes: int = 1,
                 min_available_nodes: int | None = None, participants: Sequence[int] | None = None,
                 absent: Sequence[int] = (), node_of: dict[int, int] | None = None, seed: int = 0,
                 base_config: dict | None = None, exclude: Sequence[ForgetRequest] = (), server_lr: float = 1.0,
                 round_offset: int = 0) -> None:
        if min_available_nodes is None:
            min_available_nodes = len(node_of) if node_of is not None else max(min_train_nodes, 1)
        super().__init__(fraction_train=fraction_train, fraction_evaluate=fraction_evaluate,
                         min_train_nodes=min_train_nodes, min_evaluate_nodes=min_evaluate_nodes,
                         min_available_nodes=min_available_nodes)
        self.store = store if store is not None else PseudoGradientStore()
        self.node_of = dict(node_of) if node_of is not None else None
        self.partition_of = {n: p for p, n in (self.node_of or {}).items()}
        self.participants = sorted(participants) if participants is not None else None
        self.absent = set(absent)
        self.seed = seed
        self.base_config = dict(base_config or {})
        self.exclude = list(exclude)
        if self.exclude:
            self.base_config["exclude"] = requests_json(self.exclude)
        self.server_lr = server_lr
        self.round_offset = round_offset
        self.report = RoundReport()
        self._global: Weights = []
        self._template = ArrayRecord()
        self._sent: list[tuple[Message, str]] = []
        self._clients: list[int] = []

    # -- which clients, asked to do what ---------------------------------------------------
    def clock(self, server_round: int) -> int:
        """The round on the federation's clock (what the store records and clients are seeded with)."""
        return self.round_offset + server_round

    def node(self, client: int) -> int:
        """The node id of a client."""
        return self.node_of[client] if self.node_of is not None else client

    def client_of(self, node_id: int) -> int:
        """The client a node id is (its partition id when ``node_of`` is given)."""
        return self.partition_of.get(node_id, node_id)

    def leaving(self) -> set[int]:
        """Clients never sampled when the participants come from the grid (subclasses add targets)."""
        return self.absent

    def refresh_participants(self, grid: Grid | None) -> None:
        """Without given participants: every client on the grid (or in ``node_of``) but the leaving ones."""
        if self.participants is None:
            self._clients = sorted(set(self.node_of if self.node_of is not None else wait_for_nodes(
                grid, self.min_available_nodes)) - self.leaving())

    def sample(self, server_round: int, fraction: float | None = None) -> list[int]:
        """Clients trained this round: a sample of the participants seeded by (seed, round), sorted."""
        fraction = self.fraction_train if fraction is None else fraction
        clients = self.participants if self.participants is not None else self._clients
        k = max(1, int(round(fraction * len(clients))))
        if k >= len(clients):
            return list(clients)
        rng = np.random.default_rng([self.seed, self.clock(server_round)])
        # drawn as positions: node ids are 64-bit and need not fit a numpy integer type
        return sorted(int(clients[i]) for i in rng.choice(len(clients), size=k, replace=False))

    def tasks(self, server_round: int) -> list[tuple[int, str]]:
        """(client, role) of every update asked for this round: a regular one per sampled client."""
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
        self._template = arrays
        self.refresh_participants(grid)
        tasks = self.tasks(server_round)
        self.report = RoundReport(server_round=self.clock(server_round), sampled=[pid for pid, _ in tasks])
        base = ConfigRecord({**self.base_config, **dict(config), "server-round": self.clock(server_round),
                             "seed": self.seed})
        message_type = f"{MessageType.TRAIN}.{self.behaviour}" if self.behaviour else MessageType.TRAIN
        self._sent = []
        for pid, role in tasks:
            content = RecordDict({self.arrayrecord_key: arrays,
                                  self.configrecord_key: self.task_config(pid, ConfigRecord(dict(base)), role)})
            self._sent.append((Message(content=content, message_type=message_type, dst_node_id=self.node(pid)),
                               role))
        return [m for m, _ in self._sent]

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Federated evaluation on a seeded sample of the participants (none when fraction_evaluate is 0)."""
        if self.fraction_evaluate == 0.0:
            return []
        self.refresh_participants(grid)
        config = ConfigRecord({**dict(config), "server-round": self.clock(server_round)})
        return [Message(RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config}),
                        message_type=MessageType.EVALUATE, dst_node_id=self.node(pid))
                for pid in self.sample(server_round, self.fraction_evaluate)]

    def _roles(self) -> dict[str, str]:
        """Message id -> role of every message sent this round (the grid sets the ids as it pushes them)."""
        return {m.metadata.message_id: role for m, role in self._sent if m.metadata.message_id}

    # -- what to do with the replies -------------------------------------------------------
    def collect(self, server_round: int, replies: Iterable[Message]) -> list[ClientUpdate]:
        """Sort successful replies by client, record their Δ, count failures."""
        replies = list(replies)
        problems = {id(m): error_summary(m.error.reason) if m.has_error() else self._reply_problem(m) for m in replies}
        valid = [m for m in replies if not problems[id(m)]]
        self.report.failures = [f"client {self.client_of(m.metadata.src_node_id)}: {problems[id(m)]}"
                                for m in replies if problems[id(m)]]
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
            extra = {k: r.to_numpy_ndarrays() for k, r in msg.content.array_records.items()
                     if k != self.arrayrecord_key}
            updates.append(ClientUpdate(self.client_of(msg.metadata.src_node_id), int(metrics["num-examples"]), delta,
                                        metrics, roles.get(msg.metadata.reply_to_message_id, REGULAR), extra))
        updates.sort(key=lambda u: (u.client, u.role))
        for u in updates:
            if u.role == REGULAR:  # the store keeps each client's regular updates
                self.store.record(u.client, self.clock(server_round), u.num_examples, u.delta)
        model_bytes = sum(g.nbytes for g in self._global)
        self.report.succeeded = [u.client for u in updates]
        self.report.client_epochs = float(sum(u.metrics.get("local-epochs", 0.0) for u in updates))
        self.report.bytes_exchanged = model_bytes * (len(self.report.sampled) + len(updates))
        self.report.train_loss = weighted_metric(updates, ("train-loss", "train_loss"))
        return updates

    def _reply_problem(self, msg: Message) -> str:
        """Why a train reply cannot be aggregated ("" when it can): Flower's convention
        (:func:`~fedunlearn.flower.runtime.train_reply_problem`), this strategy's ArrayRecord key, and
        arrays shaped as the model sent (numpy would broadcast a wrong shape into the Δ silently)."""
        if why := train_reply_problem(msg):
            return why
        if self.arrayrecord_key not in msg.content.array_records:
            return f"reply without the ArrayRecord {self.arrayrecord_key!r}"
        shapes = [tuple(a.shape) for a in msg.content[self.arrayrecord_key].values()]
        sent = [g.shape for g in self._global]
        if shapes != sent:
            return f"reply's arrays have shapes {shapes}, the model sent {sent}"
        return ""

    def combine(self, server_round: int, global_weights: Weights, updates: list[ClientUpdate]) -> Weights:
        """FedAvg in pseudo-gradient space: w + η_s Σ (n_k/N) Δ_k, summed in client order."""
        return weighted_step(global_weights, [(u.num_examples, u.delta) for u in updates], self.server_lr)

    @classmethod
    def from_config(cls, cfg: ExperimentConfig, store: PseudoGradientStore, node_of: dict[int, int],
                    participants: Sequence[int], exclude: Sequence[ForgetRequest] = (), **kwargs) -> RecordingFedAvg:
        """The experiment's FedAvg recipe over ``participants`` (extra kwargs go to subclasses)."""
        t = cfg.train
        return cls(store, node_of=node_of, participants=participants, seed=cfg.seed, base_config=local_recipe(cfg),
                   fraction_train=t.fraction_train, min_train_nodes=t.min_train_clients, server_lr=t.server_lr,
                   exclude=exclude, **kwargs)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        updates = self.collect(server_round, replies)
        new = self.combine(server_round, self._global, updates)
        return record_like(self._template, new), self.round_metrics(updates)

    def round_metrics(self, updates: list[ClientUpdate]) -> MetricRecord:
        """The MetricRecord of an aggregated round: mean train loss, clients aggregated, failures."""
        return MetricRecord({"train-loss": self.report.train_loss, "clients": len(updates),
                             "failures": len(self.report.failures)})


def wait_for_nodes(grid: Grid, count: int, timeout: float = 600.0) -> list[int]:
    """The grid's node ids, once at least ``count`` have connected (SuperNodes register over time)."""
    deadline = time.monotonic() + timeout
    while len(nodes := list(grid.get_node_ids())) < count:
        if time.monotonic() > deadline:
            raise TooFewClientsError(f"min_available_nodes: only {len(nodes)} of {count} nodes connected within "
                                     f"{timeout:g} s; start more SuperNodes or lower min_available_nodes")
        time.sleep(0.2)
    return [int(n) for n in nodes]


def weighted_metric(updates: Sequence[ClientUpdate], keys: Sequence[str]) -> float:
    """The num-examples-weighted mean of the first of ``keys`` the replies report (NaN when none does)."""
    for key in keys:
        reporting = [u for u in updates if key in u.metrics]
        total = sum(u.num_examples for u in reporting)
        if total > 0:
            return sum(u.num_examples * float(u.metrics[key]) for u in reporting) / total
    return float("nan")


def federation_spec(cfg: ExperimentConfig) -> str:
    """What a client needs to rebuild its task, data and model, as the JSON string clients cache on."""
    raw = config_to_dict(cfg)
    return json.dumps({"seed": cfg.seed, "task": raw["task"], "data": raw["data"], "model": raw["model"]},
                      sort_keys=True)


def local_recipe(cfg: ExperimentConfig) -> dict:
    """The config every training client receives: federation spec, local SGD recipe, and its device
    (``cuda`` when ``simulation.num_gpus`` gives each client actor a GPU or a share of one)."""
    t = cfg.train
    return {"federation": federation_spec(cfg), "local-epochs": t.local_epochs,
            "batch-size": t.batch_size, "lr": t.lr, "momentum": t.momentum,
            "device": cfg.simulation.client_device}
