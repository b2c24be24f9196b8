"""Selector interface: pick node ids for a round, optionally from the registry's history."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from fl_ext.rng_state import restore_rng, rng_state
from fl_ext.selection.registry import ClientRegistry


def draw(
    rng: np.random.Generator,
    nodes: Sequence[int],
    k: int,
    *,
    p: np.ndarray | None = None,
) -> list[int]:
    """``k`` distinct entries of ``nodes`` (probabilities ``p``), chosen by index.

    Flower node ids are random unsigned 64-bit integers: ``rng.choice(node_ids)`` would turn a
    list whose ids straddle 2**63 into float64 and round them to ids no node has. Drawing
    positions keeps every id exact (and draws the same positions as ``rng.choice(nodes)``).
    """
    positions = rng.choice(len(nodes), size=k, replace=False, p=p)
    return [int(nodes[i]) for i in positions]


class Selector(ABC):
    """Picks ``max(ceil(fraction * available), minimum)`` of the available nodes."""

    def __init__(self, *, fraction: float, minimum: int, seed: int = 0) -> None:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        if isinstance(minimum, bool) or not isinstance(minimum, int) or minimum < 1:
            raise ValueError(f"minimum number of nodes must be an integer >= 1, got {minimum!r}")
        self.fraction = float(fraction)
        self.minimum = int(minimum)
        self.seed = int(seed)

    def sample_size(self, num_available: int) -> int:
        """How many nodes a round asks for, given ``num_available`` connected ones."""
        return min(num_available, max(math.ceil(self.fraction * num_available), self.minimum))

    def select(
        self,
        node_ids: Sequence[int],
        *,
        registry: ClientRegistry | None = None,
        server_round: int = 0,
        count: int | None = None,
    ) -> list[int]:
        """Sorted ids of the selected nodes (``count`` of them if given, else the fraction)."""
        pool = sorted(node_ids)  # sorted first: the order nodes connected in is moot
        k = self.sample_size(len(pool)) if count is None else min(count, len(pool))
        picked = self.pick(pool, k, registry or ClientRegistry(), server_round)
        return sorted(int(n) for n in picked)

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state for checkpoints: the random generator (``_rng``) if the rule has one."""
        rng = getattr(self, "_rng", None)
        return {} if rng is None else {"rng": rng_state(rng)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        rng = getattr(self, "_rng", None)
        if rng is not None and "rng" in state:
            restore_rng(rng, state["rng"])

    @abstractmethod
    def pick(
        self, pool: list[int], k: int, registry: ClientRegistry, server_round: int
    ) -> Sequence[int]:
        """``k`` distinct nodes of the sorted ``pool``."""
