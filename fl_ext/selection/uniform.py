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

    def pick(
        self, pool: list[int], k: int, registry: ClientRegistry, server_round: int
    ) -> Sequence[int]:
        return self._rng.sample(pool, k)
