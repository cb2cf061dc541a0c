"""The ClientApp: Flower's conventions only (no fedunlearn here).

A train reply holds the trained ``arrays`` and a MetricRecord with ``train_loss`` and
``num-examples``; an evaluate reply holds ``eval_loss``, ``eval_acc``, ``num-examples`` and the
node's ``partition-id`` (which the server uses to name nodes in its results).
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from digits_unlearning.task import Net, loader, partition, test, train

app = ClientApp()


def _setup(msg: Message, context: Context) -> tuple[Net, int, tuple]:
    net = Net()
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    pid = int(context.node_config["partition-id"])
    data = partition(pid, int(context.node_config["num-partitions"]), int(context.run_config["backdoor-partition"]))
    return net, pid, data


@app.train()
def train_fn(msg: Message, context: Context) -> Message:
    net, pid, (x, y) = _setup(msg, context)
    config = msg.content["config"]
    seed = int(config.get("seed", 0)) * 1_000_003 + int(config.get("server-round", 0)) * 1009 + pid
    torch.manual_seed(seed)
    loss = train(net, loader(x, y, int(context.run_config["batch-size"]), seed), int(context.run_config["local-epochs"]),
                 float(context.run_config["lr"]))
    metrics = MetricRecord({"train_loss": loss, "num-examples": len(y)})
    return Message(RecordDict({"arrays": ArrayRecord(net.state_dict()), "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate_fn(msg: Message, context: Context) -> Message:
    net, pid, (x, y) = _setup(msg, context)
    loss, acc = test(net, loader(x, y, 256))
    metrics = MetricRecord({"eval_loss": loss, "eval_acc": acc, "num-examples": len(y), "partition-id": pid})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
