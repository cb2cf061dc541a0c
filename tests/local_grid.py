"""An in-process grid: the phases run end to end on fedunlearn's real ClientApp without Ray.

Each message goes straight to :data:`fedunlearn.flower.client_app.app` with a Flower ``Context``
holding the node's partition id, as a SuperNode would call it, one after another. Fast tests of
whole phases (resume, failing clients, diverging training) use it; the ``slow`` tests run the
same phases on the Simulation Engine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from uuid import uuid4

from flwr.app import Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp

from fedunlearn.flower.client_app import app as client_app
from fedunlearn.flower.runtime import Federation

NODE_ID_BASE = 1000


class LocalGrid:
    """The two Grid methods a :class:`~fedunlearn.flower.runtime.Federation` uses, served in process.

``app`` is the ClientApp every node runs (fedunlearn's by default; a test of anyone's app passes
its own, with the ``run_config`` it reads); ``node_ids`` the nodes' ids, partition by partition.

    ``tamper(partition_id, message)`` may change a train message before its client sees it (to
    make a client fail on purpose).
    """

    def __init__(self, num_clients: int, tamper: Callable[[int, Message], None] | None = None,
                 app: ClientApp = client_app, run_config: dict | None = None, node_ids: list[int] | None = None) -> None:
        node_ids = node_ids or [NODE_ID_BASE + pid for pid in range(num_clients)]
        self.contexts = {node: Context(run_id=1, node_id=node,
                                       node_config={"partition-id": pid, "num-partitions": num_clients},
                                       state=RecordDict(), run_config=dict(run_config or {}))
                         for pid, node in enumerate(node_ids)}
        self.tamper = tamper
        self.app = app

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())  # as the SuperLink (and InMemoryGrid) does
            context = self.contexts[msg.metadata.dst_node_id]
            if self.tamper is not None and msg.metadata.message_type.startswith(MessageType.TRAIN):
                self.tamper(int(context.node_config["partition-id"]), msg)
            replies.append(self.app(msg, context))
        return replies


def local_federation(num_clients: int, tamper: Callable[[int, Message], None] | None = None,
                     **kwargs) -> Federation:
    """A :class:`Federation` over a :class:`LocalGrid` (kwargs go to Federation)."""
    return Federation(LocalGrid(num_clients, tamper), num_clients, **kwargs)
