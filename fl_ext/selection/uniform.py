"""Uniform random selection with its own seeded generator (reproducible runs)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence


class UniformSelector:
    """Pick ``max(ceil(fraction * available), minimum)`` nodes uniformly without replacement.

    Flower samples with the global ``random`` module, so two runs with the same seed pick
    different clients; this selector owns its generator.
    """

    def __init__(self, *, fraction: float, minimum: int, seed: int = 0) -> None:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        if minimum < 1:
            raise ValueError(f"minimum number of nodes must be >= 1, got {minimum}")
        self.fraction = float(fraction)
        self.minimum = int(minimum)
        self._rng = random.Random(seed)

    def sample_size(self, num_available: int) -> int:
        """How many nodes a round asks for, given ``num_available`` connected ones."""
        return min(num_available, max(math.ceil(self.fraction * num_available), self.minimum))

    def select(self, node_ids: Sequence[int]) -> list[int]:
        """Sorted ids of the selected nodes (ids sorted first, so order of arrival is moot)."""
        pool = sorted(node_ids)
        return sorted(self._rng.sample(pool, self.sample_size(len(pool))))
