"""A Grid that runs the real ClientApp in this process, without Ray or a SuperLink.

The strategy, client and aggregator code is the same as under ``flwr run``.

It exists for tests of the round loop and for large experiment matrices that cannot afford a
Flower simulation per configuration; ``tests/simulations`` checks it against ``flwr run``.
Each node keeps its own :class:`Context` (state survives rounds, as on a SuperNode), messages
and replies travel as wire copies (deflated and inflated, so no node can alter what another
receives), and a client exception becomes an error reply, as Flower's runtime does.
"""

from __future__ import annotations

import itertools
import time
import traceback
from collections.abc import Callable, Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from strategies.wire import wire_copy

CLIENT_EXCEPTION_CODE = 1  # Flower's ErrorCode.CLIENT_APP_RAISED_EXCEPTION
SERVER_NODE_ID = 0


class InProcessGrid(Grid):
    """``num_nodes`` virtual SuperNodes with ids 1..n and partition ids 0..n-1.

    ``reply_delay_s(node)``: wall seconds before that node's reply can be pulled (it is computed
    at once), to test deadlines on measured times.
    """

    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        *,
        run_id: int = 1,
        node_config: Callable[[int], dict[str, int | str | float | bool]] | None = None,
        reply_delay_s: Callable[[int], float] | None = None,
    ) -> None:
        if num_nodes < 1:
            raise ValueError(f"num_nodes must be >= 1, got {num_nodes}")
        self.client_app = client_app
        self._run = Run.create_empty(run_id)
        TaskIdentity.run_id = run_id
        TaskIdentity.node_id = SERVER_NODE_ID
        TaskIdentity.task_id = 0
        make_config = node_config or (
            lambda pid: {"partition-id": pid, "num-partitions": num_nodes}
        )
        self.contexts = {
            pid + 1: Context(
                run_id=run_id,
                node_id=pid + 1,
                node_config=make_config(pid),
                state=RecordDict(),
                run_config={},
            )
            for pid in range(num_nodes)
        }
        self._ids = itertools.count(1)
        self._replies: dict[str, tuple[float, Message]] = {}  # id -> (ready at, reply)
        self.reply_delay_s = reply_delay_s  # wall seconds before a node's reply can be pulled

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            message_id = f"m{next(self._ids)}"
            msg.metadata.__dict__["_message_id"] = message_id
            delay = self.reply_delay_s(msg.metadata.dst_node_id) if self.reply_delay_s else 0.0
            self._replies[message_id] = (time.monotonic() + delay, self._deliver(msg))
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        now = time.monotonic()
        ready = [m for m in message_ids if m in self._replies and self._replies[m][0] <= now]
        return [self._replies.pop(mid)[1] for mid in ready]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))

    def _deliver(self, msg: Message) -> Message:
        context = self.contexts.get(msg.metadata.dst_node_id)
        if context is None:
            return Message(Error(CLIENT_EXCEPTION_CODE, "unknown node"), reply_to=msg)
        delivered = Message(
            wire_copy(msg.content),
            msg.metadata.dst_node_id,
            msg.metadata.message_type,
            group_id=msg.metadata.group_id,
        )
        delivered.metadata.__dict__["_message_id"] = msg.metadata.message_id
        try:
            reply = self.client_app(delivered, context)
        except Exception as err:  # noqa: BLE001  (a client failure is a reply, as in Flower)
            reason = f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=3)}"
            return Message(Error(CLIENT_EXCEPTION_CODE, reason), reply_to=msg)
        if reply.has_error():
            return reply
        received = Message(wire_copy(reply.content), reply_to=msg)
        return received
