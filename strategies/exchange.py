"""Push messages, pull replies as they arrive, and note when each one arrived.

On a deployment the ServerApp's grid (Flower's ``HttpGrid``) sleeps 3 s between pulls in
``send_and_receive``, so every exchange costs a multiple of 3 s (the simulation engine's
in-memory grid polls every 0.1 s). This loop polls every
``poll_s`` (backing off to ``max_poll_s`` while nothing comes) and records each reply's wall
time since the push: on a deployment that is the node's measured round time (download,
compute, upload, the SuperNode's process start), which the registry and the metrics use.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Message
from flwr.serverapp import Grid


@dataclass
class InFlight:
    """Messages the strategy stopped waiting for: their nodes are busy until drained.

    A node is never sent a second message while its first is unanswered. An entry expires
    ``max_age_s`` after its push (a node that never answers becomes selectable again).
    """

    max_age_s: float = 3600.0
    pending: dict[str, tuple[int, float]] = field(default_factory=dict)  # id -> (node, pushed)

    def busy(self) -> set[int]:
        """Nodes with an unanswered message."""
        now = time.monotonic()
        self.pending = {
            mid: (node, t) for mid, (node, t) in self.pending.items() if now - t < self.max_age_s
        }
        return {node for node, _ in self.pending.values()}


@dataclass
class Exchanged:
    """Replies of one exchange and their wall time since the push (by ``id(reply)``)."""

    replies: list[Message] = field(default_factory=list)
    seconds: dict[int, float] = field(default_factory=dict)
    not_pushed: int = 0
    left_in_flight: int = 0  # not answered when the exchange stopped
    drained: list[tuple[int, float]] = field(default_factory=list)  # late: (node, seconds)

    def by_node(self) -> dict[int, float]:
        """Reply time per answering node."""
        return {m.metadata.src_node_id: self.seconds[id(m)] for m in self.replies}

    def metrics(self, prefix: str) -> dict[str, float]:
        """Median, max and p99/median of the reply times (empty when nothing arrived)."""
        if not self.seconds:
            return {}
        times = np.fromiter(self.seconds.values(), dtype=np.float64)
        median = float(np.median(times))
        return {
            f"{prefix}reply_s_median": median,
            f"{prefix}reply_s_max": float(times.max()),
            f"{prefix}reply_straggler_index": float(np.percentile(times, 99) / max(median, 1e-9)),
        }


def _push(grid: Grid, messages: list[Message]) -> tuple[dict[str, int], dict[str, int]]:
    """Push; return ``{message id: destination}`` of the accepted messages and their push order.

    A refused message is marked differently by each grid: Flower's ``HttpGrid`` (deployment)
    returns None in its place, its in-memory grid (``flwr run`` simulation) leaves it out
    (a shorter list). The grid writes each message's id into its metadata before pushing, so
    accepted messages are found by id, never by position.
    """
    if not messages:
        return {}, {}
    accepted = {mid for mid in grid.push_messages(messages) if mid}
    pending: dict[str, int] = {}
    order: dict[str, int] = {}
    for i, msg in enumerate(messages):
        mid = msg.metadata.message_id
        if mid in accepted and mid not in pending:
            pending[mid] = int(msg.metadata.dst_node_id)
            order[mid] = i
    if len(pending) < len(accepted):  # a grid that returns ids but not the messages' own
        raise RuntimeError(
            f"the grid accepted {len(accepted)} messages but only {len(pending)} carry the id "
            "it returned in their metadata"
        )
    return pending, order


def exchange(
    grid: Grid,
    messages: Iterable[Message],
    *,
    timeout: float,
    enough: int | None = None,
    in_flight: InFlight | None = None,
    poll_s: float = 0.02,
    max_poll_s: float = 0.5,
) -> Exchanged:
    """Push ``messages``; pull until every reply arrived or ``timeout`` seconds passed.

    Replies come back in the order their messages were pushed, whatever order they arrived
    in: aggregation sums them in that order, so a run stays reproducible. ``enough``: stop
    at that many replies. ``in_flight``: late replies of earlier exchanges are drained
    (``drained``) and this exchange's unanswered messages are added to it.
    """
    out = Exchanged()
    messages = list(messages)
    stale = in_flight.pending if in_flight is not None else {}
    if not messages and not stale:
        return out
    start = time.monotonic()
    pending, order = _push(grid, messages)
    out.not_pushed = len(messages) - len(pending)
    wait = poll_s
    updates = 0  # replies with content: what ``enough`` counts (an error reply is no update)
    while pending or (stale and not messages):
        got = list(grid.pull_messages([*pending, *stale]))
        now = time.monotonic() - start
        for reply in got:
            mid = reply.metadata.reply_to_message_id
            if mid in stale:
                node, pushed_at = stale.pop(mid)
                out.drained.append((node, time.monotonic() - pushed_at))
            elif pending.pop(mid, None) is not None:
                out.replies.append(reply)
                out.seconds[id(reply)] = now
                updates += not reply.has_error()
        if not messages or not pending or now >= timeout:
            break
        if enough is not None and 0 < enough <= updates:
            break
        wait = poll_s if got else min(wait * 2, max_poll_s)
        time.sleep(min(wait, max(timeout - now, 0.0)))
    out.left_in_flight = len(pending)
    if in_flight is not None:
        in_flight.pending.update({mid: (node, start) for mid, node in pending.items()})
    out.replies.sort(key=lambda m: order[m.metadata.reply_to_message_id])
    return out
