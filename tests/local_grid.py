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

from fedunlearn.flower.client_app import app as client_app
from fedunlearn.flower.runtime import Federation

NODE_ID_BASE = 1000


class LocalGrid:
    """The two Grid methods a :class:`~fedunlearn.flower.runtime.Federation` uses, served in process.

    ``tamper(partition_id, message)`` may change a train message before its client sees it (to
    make a client fail on purpose).
    """

    def __init__(self, num_clients: int, tamper: Callable[[int, Message], None] | None = None) -> None:
        self.contexts = {NODE_ID_BASE + pid: Context(run_id=1, node_id=NODE_ID_BASE + pid,
                                                     node_config={"partition-id": pid}, state=RecordDict(),
                                                     run_config={})
                         for pid in range(num_clients)}
        self.tamper = tamper

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())  # as the SuperLink (and InMemoryGrid) does
            context = self.contexts[msg.metadata.dst_node_id]
            if self.tamper is not None and msg.metadata.message_type.startswith(MessageType.TRAIN):
                self.tamper(int(context.node_config["partition-id"]), msg)
            replies.append(client_app(msg, context))
        return replies


def local_federation(num_clients: int, tamper: Callable[[int, Message], None] | None = None,
                     **kwargs) -> Federation:
    """A :class:`Federation` over a :class:`LocalGrid` (kwargs go to Federation)."""
    return Federation(LocalGrid(num_clients, tamper), num_clients, **kwargs)
