"""The Flower ClientApp: local work on this node's partition, one handler per message type.

``train`` messages run local SGD; ``train.<behaviour>`` messages run the behaviour registered under
that name in :data:`fedunlearn.clients.BEHAVIOURS` (``train.ascent``: PGA's projected ascent). With
``grad-stats`` in the config, any behaviour's reply also holds the per-coordinate gradient
statistics of feasible-update masking (``grad-mean``, ``grad-std``). A message with the ArrayRecord
``dilution-mask`` has its pruned weights held at 0 after every local step (docs/methods.md, "Dilution").
Everything a client needs to rebuild its data and model travels in the message's config (the
``federation`` key, a JSON string) and is cached per process; the forget requests in effect travel
as ``exclude`` (train on the rest) and ``only`` (train on their forget samples alone), so an actor builds its data and model
once and only loads weights each round. A behaviour that raises answers with an error reply carrying
the traceback, which the server counts and logs (one console line per round, the tracebacks in
failures.log) instead of Flower printing each one.
"""

from __future__ import annotations

import functools
import json
import traceback

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedunlearn.clients import BEHAVIOURS, ClientRequest
from fedunlearn.clients.train import OBJECTIVE_STREAM, stream_seed
from fedunlearn.config import DataConfig, ModelConfig, TaskConfig
from fedunlearn.data import ClientData, federated_data
from fedunlearn.data.forget_sets import kept_indices, requests_from_json
from fedunlearn.dilution import MASK_RECORD, attach, hold
from fedunlearn.models import build_model
from fedunlearn.settings import build
from fedunlearn.tasks import build_task
from fedunlearn.training import batch_gradient_stats, get_weights, set_weights

app = ClientApp()

CLIENT_RAISED = 2  # Flower's error code for "the ClientApp raised an exception"


def client_seed(base_seed: int, server_round: int, partition_id: int) -> int:
    """The seed of one client's local run in one round: independent of which actor runs it."""
    return int(np.random.SeedSequence([base_seed, server_round, partition_id]).generate_state(1)[0])


@functools.lru_cache(maxsize=4)
def _federation(spec: str):
    raw = json.loads(spec)
    data_cfg, model_cfg = build(DataConfig, raw["data"], "data."), build(ModelConfig, raw["model"], "model.")
    data = federated_data(data_cfg, raw["seed"])
    task = build_task(build(TaskConfig, raw["task"], "task."))
    return data, build_model(model_cfg, data.input_shape, data.num_classes, raw["seed"]), task


def _partition_id(context: Context) -> int:
    return int(context.node_config["partition-id"])


@functools.lru_cache(maxsize=16)
def _local_data(spec: str, pid: int, seed: int, exclude_json: str, only_json: str) -> ClientData:
    """The samples a round trains on: all but the ``exclude`` requests' (or only the ``only`` requests').

    Cached: the same requests select the same samples in every round, so they are cut out once.
    """
    client = _federation(spec)[0].clients[pid]
    exclude, only = requests_from_json(exclude_json), requests_from_json(only_json)
    if not exclude and not only:
        return client
    kept = kept_indices(client.y_train, client.poisoned, pid, seed, exclude, only)
    if len(kept) == 0:
        raise ValueError(f"client {pid} has no sample left to train on after the forget requests")
    return client.subset(kept)


def _device(name: str) -> str:
    """The device asked for ("cuda" when the actor was given a GPU or a share of one), or a clear error."""
    if name == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("simulation.num_gpus > 0 asks clients to train on a GPU, but this client's process "
                               "sees none; give its node a GPU or set simulation.num_gpus = 0")
        torch.backends.cudnn.benchmark = False  # cuDNN's autotuner picks kernels by timing: not reproducible
        torch.backends.cudnn.deterministic = True
    return name


def _handler(behaviour_name: str):
    behaviour = BEHAVIOURS.factory(behaviour_name)

    def run(msg: Message, context: Context) -> Message:
        config = dict(msg.content["config"])
        pid = _partition_id(context)
        spec = str(config["federation"])
        _, model, task = _federation(spec)
        model.to(_device(str(config.get("device", "cpu"))))
        set_weights(model, msg.content["arrays"].to_numpy_ndarrays())
        attach(model, msg.content.array_records.get(MASK_RECORD))  # dilution: held after every local step
        extra = {k: r.to_numpy_ndarrays() for k, r in msg.content.array_records.items() if k != "arrays"}
        seed = client_seed(int(config["seed"]), int(config["server-round"]), pid)
        request = ClientRequest(config, seed, extra, context.state, task.objective(stream_seed(seed, OBJECTIVE_STREAM)))
        mine = _local_data(spec, pid, int(config["seed"]), str(config.get("exclude", "")),
                           str(config.get("only", "")))
        # feasible-update masking asks for gradient statistics at the received weights (docs/methods.md)
        stats = batch_gradient_stats(model, mine.x_train, mine.y_train, batch_size=int(config["batch-size"]),
                                     seed=request.seed) if config.get("grad-stats") else None
        result = behaviour(model, mine, request)
        hold(model)  # and after the behaviour (the probe's one step is not train_local's)
        if stats is not None:
            result.arrays.update({"grad-mean": stats[0], "grad-std": stats[1]})
            result.metrics["grad-batches"] = stats[2]
        metrics = MetricRecord({**result.metrics, "num-examples": mine.num_examples, "partition-id": pid,
                                "train-loss": result.loss, "local-epochs": float(result.epochs)})
        extra_out = {name: ArrayRecord(arrays) for name, arrays in result.arrays.items()}
        return Message(RecordDict({"arrays": ArrayRecord(get_weights(model)), "metrics": metrics, **extra_out}),
                       reply_to=msg)

    def handle(msg: Message, context: Context) -> Message:
        """Run the behaviour from the received global weights and return the new weights (or the error)."""
        try:
            return run(msg, context)
        except Exception:  # noqa: BLE001 - any failure of the behaviour goes back to the server as a reply
            return Message(Error(CLIENT_RAISED, traceback.format_exc()), reply_to=msg)

    handle.__name__ = f"train_{behaviour_name}"
    return handle


for _name in BEHAVIOURS.names():
    app.train(_name)(_handler(_name))


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds (node ids are random in simulation)."""
    return Message(RecordDict({"info": ConfigRecord({"partition-id": _partition_id(context)})}), reply_to=msg)
