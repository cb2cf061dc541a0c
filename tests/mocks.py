"""Mock Flower replies, built the way Flower's own strategy tests build them."""

from __future__ import annotations

import itertools

import numpy as np
from flwr.app import Array, ArrayRecord, Error, Message, Metadata, MetricRecord, RecordDict

_ids = itertools.count()


def _metadata(src_node_id: int, reply_to: str = "") -> Metadata:
    return Metadata(run_id=1, message_id=f"m{next(_ids)}", src_node_id=src_node_id, dst_node_id=0,
                    reply_to_message_id=reply_to, group_id="", created_at=0.0, ttl=100.0, message_type="train")


def send(messages: list[Message]) -> list[Message]:
    """Give sent messages their ids, as the SuperLink does when a grid pushes them."""
    for m in messages:
        m.metadata.__dict__["_message_id"] = f"sent{next(_ids)}"
    return messages


def train_reply(partition_id: int, num_examples: int, weights: list[np.ndarray], loss: float = 1.0,
                epochs: float = 1.0, reply_to: str = "") -> Message:
    """A successful train reply from the node holding ``partition_id`` (node id = 100 + pid).

    ``reply_to``: the id of the message it answers (needed where a node gets two messages).
    """
    content = RecordDict({
        "arrays": ArrayRecord([np.asarray(w, dtype=np.float32) for w in weights]),
        "metrics": MetricRecord({"num-examples": num_examples, "partition-id": partition_id,
                                 "train-loss": loss, "local-epochs": epochs}),
    })
    return Message(content, metadata=_metadata(100 + partition_id, reply_to))


def node_reply(node_id: int, num_examples: int, weights: dict[str, np.ndarray], reply_to: str = "",
               metrics: dict | None = None) -> Message:
    """A train reply from a ClientApp that knows only Flower's conventions: named arrays and num-examples."""
    content = RecordDict({
        "arrays": ArrayRecord({k: Array(np.asarray(w, dtype=np.float32)) for k, w in weights.items()}),
        "metrics": MetricRecord({"num-examples": num_examples, **(metrics or {})}),
    })
    return Message(content, metadata=_metadata(node_id, reply_to))


def error_reply(partition_id: int, reason: str = "ClientApp raised") -> Message:
    """An error reply, as the Simulation Engine returns when a ClientApp raises."""
    return Message(Error(code=0, reason=reason), metadata=_metadata(100 + partition_id))


def reply_with(partition_id: int, content: RecordDict) -> Message:
    """A train reply without an error whose content is ``content`` as given (possibly malformed)."""
    return Message(content, metadata=_metadata(100 + partition_id))
