"""Optimized attacks: search the strength factor that pushes the aggregate farthest.

As in the ByzFL benchmark: the attacker knows the honest updates and the aggregation, and
picks the factor maximizing ``||aggregate(honest + byzantine(factor)) - mean(honest)||``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from fl_ext.attacks.base import OmniscientAttack

Aggregate = Callable[[torch.Tensor], torch.Tensor]


class LineSearch(OmniscientAttack):
    """Wrap an attack with a factor; grid search on a log scale, then refine around the best."""

    def __init__(
        self,
        *,
        attack: OmniscientAttack,
        low: float = 1e-2,
        high: float = 1e2,
        points: int = 13,
        refinements: int = 2,
    ) -> None:
        if attack.factor is None:
            attack = attack.with_factor(1.0)
        if not 0 < low < high:
            raise ValueError(f"need 0 < low < high, got low={low}, high={high}")
        if points < 2 or refinements < 0:
            raise ValueError(
                f"points must be >= 2 and refinements >= 0, got {points}, {refinements}"
            )
        self.attack = attack
        self.low, self.high, self.points, self.refinements = low, high, points, refinements
        self.aggregate: Aggregate | None = None
        self.last_factor: float | None = None  # diagnostic of the last call only

    def bind(self, aggregate: Aggregate) -> LineSearch:
        """Set the aggregation the attacker optimizes against (the server's own)."""
        self.aggregate = aggregate
        return self

    def craft(
        self, honest: torch.Tensor, num_byzantine: int, generator: torch.Generator | None
    ) -> torch.Tensor:
        if self.aggregate is None:
            raise ValueError("LineSearch needs bind(aggregate) before use")
        target = honest.double().mean(0)
        state = None if generator is None else generator.get_state()

        def damage(factor: float) -> float:
            if state is not None and generator is not None:
                generator.set_state(state)  # same noise for every factor
            byz = self.attack.with_factor(factor)(honest, num_byzantine, generator)
            assert self.aggregate is not None
            out = self.aggregate(torch.cat([honest, byz]))
            return float(torch.linalg.vector_norm(out.double() - target))

        grid = np.geomspace(self.low, self.high, self.points)
        best = max(grid, key=damage)
        for _ in range(self.refinements):
            ratio = (self.high / self.low) ** (1 / (self.points - 1))
            grid = np.geomspace(best / ratio, best * ratio, 5)
            best = max(grid, key=damage)
        self.last_factor = float(best)
        if state is not None and generator is not None:
            generator.set_state(state)
        return self.attack.with_factor(float(best))(honest, num_byzantine, generator)
