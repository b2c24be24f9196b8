"""Bounded wait for SuperNodes to connect before round 1."""

from __future__ import annotations

import time
from logging import INFO

from flwr.serverapp import Grid
from flwr.supercore import log


def wait_for_nodes(
    grid: Grid, minimum: int, *, timeout: float = 120.0, settle: float = 1.0, poll: float = 0.2
) -> list[int]:
    """Wait until ``minimum`` nodes are connected and the count has been stable ``settle`` s.

    In simulation the ServerApp can start before every SuperNode registered; waiting for the
    count to settle lets round 1 see the whole federation. Raises ``TimeoutError`` if fewer
    than ``minimum`` nodes connect within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    last_count, stable_since = -1, time.monotonic()
    while True:
        nodes = sorted(grid.get_node_ids())
        now = time.monotonic()
        if len(nodes) != last_count:
            last_count, stable_since = len(nodes), now
        if len(nodes) >= minimum and now - stable_since >= settle:
            log(INFO, "%d nodes connected (minimum %d)", len(nodes), minimum)
            return nodes
        if now >= deadline:
            if len(nodes) >= minimum:
                return nodes
            raise TimeoutError(
                f"only {len(nodes)} nodes connected after {timeout:.0f}s; min_available_nodes "
                f"is {minimum}. Start more SuperNodes or lower min_available_nodes."
            )
        time.sleep(poll)
