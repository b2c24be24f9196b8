"""Uniform random selection with its own seeded generator (reproducible runs)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from fl_ext.selection.base import Selector
from fl_ext.selection.registry import ClientRegistry


class UniformSelector(Selector):
    """Pick ``max(ceil(fraction * available), minimum)`` nodes uniformly without replacement.

    Flower samples with the global ``random`` module, so two runs with the same seed pick
    different clients; this selector owns its generator.
    """

    def __init__(self, *, fraction: float, minimum: int, seed: int = 0) -> None:
        super().__init__(fraction=fraction, minimum=minimum, seed=seed)
        self._rng = random.Random(seed)

    def select(
        self,
        node_ids: Sequence[int],
        *,
        registry: ClientRegistry | None = None,
        server_round: int = 0,
        count: int | None = None,
    ) -> list[int]:
        """Sorted ids of the selected nodes (ids sorted first, so order of arrival is moot)."""
        pool = sorted(node_ids)
        return sorted(self._rng.sample(pool, self._count(len(pool), count)))
