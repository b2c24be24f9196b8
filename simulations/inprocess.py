"""A Grid that runs the real ClientApp in this process, without Ray or a SuperLink.

The strategy, client and aggregator code is the same as under ``flwr run``.

It exists for tests of the round loop and for large experiment matrices that cannot afford a
Flower simulation per configuration; ``tests/simulations`` checks it against ``flwr run``.
Each node keeps its own :class:`Context` (state survives rounds, as on a SuperNode), messages
and replies travel as wire copies (deflated and inflated, so no node can alter what another
receives), and a client exception becomes an error reply, as Flower's runtime does.
"""

from __future__ import annotations

import logging
import random
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Sequence

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_ins_message
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from strategies.wire import wire_copy

log = logging.getLogger("fl_ext")
CLIENT_EXCEPTION_CODE = int(ErrorCode.CLIENT_APP_RAISED_EXCEPTION)  # 2 in Flower 1.41
SERVER_NODE_ID = 0


def flower_like_node_ids(num_nodes: int, seed: int = 0) -> list[int]:
    """``num_nodes`` distinct random unsigned 64-bit ids, as Flower's SuperLink hands out.

    The first id is drawn from the upper half (>= 2**63) and the second from the lower half,
    so every grid of two or more nodes has ids that straddle 2**63: the case that breaks
    code turning ids into a numpy array (float64 rounding) or a signed int64. Returned in
    ascending order, so partition i goes to the i-th smallest id: code that orders nodes by
    id (selectors, the Byzantine designation) sees the partitions in the order it saw with
    ids 1..n, and in-process results do not depend on the draw.
    """
    rng = random.Random(seed)
    ids: list[int] = []
    while len(ids) < num_nodes:
        value = rng.getrandbits(64)
        if len(ids) == 0:
            value |= 1 << 63
        elif len(ids) == 1:
            value &= (1 << 63) - 1
        if value != SERVER_NODE_ID and value not in ids:
            ids.append(value)
    return sorted(ids)


class InProcessGrid(Grid):
    """``num_nodes`` virtual SuperNodes with Flower-like random 64-bit ids, partitions 0..n-1.

    ``node_ids``: explicit ids instead (unit tests that compute with small ids);
    ``id_seed`` seeds the random ids. As Flower's in-memory grid does, a message to a node
    that does not exist (or for which ``refuse_push(partition_id)`` is true) is refused: it is
    left out of the ids ``push_messages`` returns. ``reply_delay_s(partition_id)``: wall
    seconds before that node's reply can be pulled (it is computed at once), to test
    deadlines on measured times. A reply is pulled once: pulling an id again (or one never
    pushed) gets Flower's own "Message Unavailable" error reply, as the SuperLink answers.
    """

    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        *,
        run_id: int = 1,
        node_config: Callable[[int], dict[str, int | str | float | bool]] | None = None,
        reply_delay_s: Callable[[int], float] | None = None,
        node_ids: Sequence[int] | None = None,
        id_seed: int = 0,
        refuse_push: Callable[[int], bool] | None = None,
    ) -> None:
        if num_nodes < 1:
            raise ValueError(f"num_nodes must be >= 1, got {num_nodes}")
        ids = list(node_ids) if node_ids is not None else flower_like_node_ids(num_nodes, id_seed)
        if len(ids) != num_nodes or len(set(ids)) != num_nodes or SERVER_NODE_ID in ids:
            raise ValueError(f"node_ids must be {num_nodes} distinct non-zero ids, got {ids}")
        self.client_app = client_app
        self._run = Run.create_empty(run_id)
        TaskIdentity.run_id = run_id
        TaskIdentity.node_id = SERVER_NODE_ID
        TaskIdentity.task_id = 0
        make_config = node_config or (
            lambda pid: {"partition-id": pid, "num-partitions": num_nodes}
        )
        self.contexts = {
            node: Context(
                run_id=run_id,
                node_id=node,
                node_config=make_config(pid),
                state=RecordDict(),
                run_config={},
            )
            for pid, node in enumerate(ids)
        }
        self.partition = {node: pid for pid, node in enumerate(ids)}
        self.refuse_push = refuse_push
        self._replies: dict[str, tuple[float, Message]] = {}  # id -> (ready at, reply)
        self.reply_delay_s = reply_delay_s  # wall seconds before a node's reply can be pulled

    def node_id(self, partition_id: int) -> int:
        """The node that holds ``partition_id``."""
        return list(self.contexts)[partition_id]

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
            message_id = str(uuid.uuid4())
            msg.metadata.__dict__["_message_id"] = message_id
            dst = msg.metadata.dst_node_id
            pid = self.partition.get(dst)
            if pid is None or (self.refuse_push is not None and self.refuse_push(pid)):
                log.error("Invalid destination node ID for Message: %s", dst)  # as Flower logs
                continue
            delay = self.reply_delay_s(pid) if self.reply_delay_s else 0.0
            self._replies[message_id] = (time.monotonic() + delay, self._deliver(msg))
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        now = time.monotonic()
        out = []
        for mid in message_ids:
            found = self._replies.get(mid)
            if found is None:  # pulled before, or never pushed: what the SuperLink answers
                out.append(create_message_error_unavailable_ins_message(mid, self._run.run_id))
            elif found[0] <= now:
                out.append(self._replies.pop(mid)[1])
        return out

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
