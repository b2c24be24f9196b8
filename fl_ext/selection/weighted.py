"""Quality/availability weighting: nodes that deliver, and whose data the model fits worst."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fl_ext.selection.base import Selector, draw
from fl_ext.selection.registry import ClientRegistry


class WeightedSelector(Selector):
    """Draw k nodes without replacement, weight = reliability^beta x (1 + quality).

    ``reliability``: share of its selections that produced a valid update, with a prior of
    ``prior`` successes in ``prior`` selections so a new node starts at 1 and one failure does
    not rule it out. ``quality``: its last loss relative to the mean last loss of the candidates
    (0 for a node never used), so high-loss data is favoured without starving the others.
    """

    def __init__(
        self, *, fraction: float, minimum: int, seed: int = 0, beta: float = 2.0, prior: float = 2.0
    ) -> None:
        super().__init__(fraction=fraction, minimum=minimum, seed=seed)
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        if not prior > 0:
            raise ValueError(f"prior must be > 0, got {prior}")
        self.beta, self.prior = float(beta), float(prior)
        self._rng = np.random.default_rng(seed)

    def weights(self, pool: Sequence[int], registry: ClientRegistry) -> np.ndarray:
        """Selection weight of every node in ``pool``."""
        rel = np.ones(len(pool))
        loss = np.zeros(len(pool))
        for i, n in enumerate(pool):
            r = registry.get(n)
            if r is None:
                continue
            rel[i] = (r.succeeded + self.prior) / (r.selected + self.prior)
            if r.utility is not None and r.num_examples:
                loss[i] = r.utility / r.num_examples
        known = loss > 0
        quality = loss / loss[known].mean() if known.any() else loss
        return np.asarray(rel**self.beta * (1.0 + quality) + 1e-12, dtype=np.float64)

    def pick(
        self, pool: list[int], k: int, registry: ClientRegistry, server_round: int
    ) -> Sequence[int]:
        w = self.weights(pool, registry)
        return draw(self._rng, pool, k, p=w / w.sum())
