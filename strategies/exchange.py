"""Push messages, pull replies as they arrive, and note when each one arrived.

Flower's ``Grid.send_and_receive`` sleeps 3 s between pulls on a SuperLink (simulation and
deployment alike), so every exchange costs a multiple of 3 s. This loop polls every
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
class Exchanged:
    """Replies of one exchange and their wall time since the push (by ``id(reply)``)."""

    replies: list[Message] = field(default_factory=list)
    seconds: dict[int, float] = field(default_factory=dict)
    not_pushed: int = 0

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


def exchange(
    grid: Grid,
    messages: Iterable[Message],
    *,
    timeout: float,
    poll_s: float = 0.02,
    max_poll_s: float = 0.5,
) -> Exchanged:
    """Push ``messages``; pull until every reply arrived or ``timeout`` seconds passed.

    Replies come back in the order their messages were pushed, whatever order they arrived
    in: aggregation sums them in that order, so a run stays reproducible.
    """
    out = Exchanged()
    messages = list(messages)
    if not messages:
        return out
    start = time.monotonic()
    pushed = list(grid.push_messages(messages))
    # Flower returns None for a message it refused; dicts keep the push order
    order = {mid: i for i, mid in enumerate(pushed) if mid}
    pending = dict(order)
    out.not_pushed = len(messages) - len(pending)
    wait = poll_s
    while pending:
        got = list(grid.pull_messages(list(pending)))
        now = time.monotonic() - start
        for reply in got:
            if pending.pop(reply.metadata.reply_to_message_id, None) is None:
                continue  # not ours or already pulled
            out.replies.append(reply)
            out.seconds[id(reply)] = now
        if not pending or now >= timeout:
            break
        wait = poll_s if got else min(wait * 2, max_poll_s)
        time.sleep(min(wait, max(timeout - now, 0.0)))
    out.replies.sort(key=lambda m: order[m.metadata.reply_to_message_id])
    return out
