"""Oort-style guided selection (Lai et al., OSDI 2021), and power-of-choice (Cho et al., 2022).

Oort: a node's utility is its statistical utility (examples x training loss: clients whose
data the model fits worst teach it most), plus a staleness bonus for nodes not used lately
(relative here: ``staleness * sqrt(log R / last_round)`` of the utility, so it scales with
it), times a system penalty ``(T / t_i)^alpha`` when its round time ``t_i`` exceeds the
preferred round duration ``T`` (``deadline_s``, else the median known round time). A share
``explore`` of each round goes to nodes never used (random); the rest is drawn, with
probability proportional to utility, among the nodes whose utility is within ``cutoff`` of
the k-th best. ``max_participation`` caps how often one node is used (fairness).
Power-of-choice: draw ``d`` candidates in proportion to data size, keep the k with the
highest last loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fl_ext.selection.base import Selector, draw
from fl_ext.selection.registry import ClientRegistry


class OortSelector(Selector):
    """Utility-guided selection with exploration, staleness bonus, speed penalty, fairness cap."""

    def __init__(
        self,
        *,
        fraction: float,
        minimum: int,
        seed: int = 0,
        explore: float = 0.1,
        deadline_s: float | None = None,
        alpha: float = 2.0,
        staleness: float = 0.1,
        cutoff: float = 0.95,
        max_participation: int | None = None,
    ) -> None:
        super().__init__(fraction=fraction, minimum=minimum, seed=seed)
        if not 0 <= explore <= 1:
            raise ValueError(f"explore must be in [0, 1], got {explore}")
        if deadline_s is not None and not deadline_s > 0:
            raise ValueError(f"deadline_s must be > 0 or null, got {deadline_s}")
        if not alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if not staleness >= 0:
            raise ValueError(f"staleness must be >= 0, got {staleness}")
        if not 0 < cutoff <= 1:
            raise ValueError(f"cutoff must be in (0, 1], got {cutoff}")
        if max_participation is not None and max_participation < 1:
            raise ValueError(f"max_participation must be >= 1 or null, got {max_participation}")
        self.explore, self.deadline_s, self.alpha = float(explore), deadline_s, float(alpha)
        self.staleness, self.cutoff = float(staleness), float(cutoff)
        self.max_participation = max_participation
        self._rng = np.random.default_rng(seed)

    def _preferred_duration(self, registry: ClientRegistry, nodes: Sequence[int]) -> float | None:
        if self.deadline_s is not None:
            return self.deadline_s
        times = [r.duration_s for n in nodes if (r := registry.get(n)) and r.duration_s]
        return float(np.median(times)) if times else None

    def utilities(
        self, nodes: Sequence[int], registry: ClientRegistry, server_round: int
    ) -> dict[int, float]:
        """Oort utility of every explored node among ``nodes``."""
        deadline = self._preferred_duration(registry, nodes)
        out: dict[int, float] = {}
        for n in nodes:
            r = registry.get(n)
            if r is None or r.utility is None:
                continue
            u = r.utility
            if server_round > 1 and r.last_round > 0:
                u += self.staleness * math.sqrt(math.log(server_round) / r.last_round) * u
            if deadline is not None and r.duration_s and r.duration_s > deadline:
                u *= (deadline / r.duration_s) ** self.alpha
            out[n] = u
        return out

    def pick(
        self, pool: list[int], k: int, registry: ClientRegistry, server_round: int
    ) -> Sequence[int]:
        if self.max_participation is not None:
            capped = [
                n for n in pool
                if (r := registry.get(n)) is None or r.succeeded < self.max_participation
            ]  # fmt: skip
            pool = capped if len(capped) >= k else pool
        util = self.utilities(pool, registry, server_round)
        unexplored = [n for n in pool if n not in util]
        n_explore = min(len(unexplored), max(math.ceil(self.explore * k), k - len(util)))
        picked = draw(self._rng, unexplored, n_explore) if n_explore else []
        n_exploit = k - len(picked)
        if n_exploit > 0:
            ranked = sorted(util, key=lambda n: (-util[n], n))
            threshold = util[ranked[n_exploit - 1]] * self.cutoff
            candidates = [n for n in ranked if util[n] >= threshold]
            weights = np.array([util[n] for n in candidates], dtype=np.float64)
            weights += 1e-12 * max(float(weights.max()), 1.0)  # zero utility stays possible
            probs = weights / weights.sum()
            picked += draw(self._rng, candidates, n_exploit, p=probs)
        return picked


class PowerOfChoiceSelector(Selector):
    """Power-of-choice: the k highest-loss nodes among d candidates drawn by data size.

    ``d = ceil(d_factor * k)``; never-seen candidates count as highest loss.
    """

    def __init__(
        self, *, fraction: float, minimum: int, seed: int = 0, d_factor: float = 2.0
    ) -> None:
        super().__init__(fraction=fraction, minimum=minimum, seed=seed)
        if not d_factor >= 1:
            raise ValueError(f"d_factor must be >= 1, got {d_factor}")
        self.d_factor = float(d_factor)
        self._rng = np.random.default_rng(seed)

    def pick(
        self, pool: list[int], k: int, registry: ClientRegistry, server_round: int
    ) -> Sequence[int]:
        d = min(len(pool), math.ceil(self.d_factor * k))
        sizes = np.array(
            [float(((r := registry.get(n)) and r.num_examples) or 1.0) for n in pool],
            dtype=np.float64,
        )
        candidates = draw(self._rng, pool, d, p=sizes / sizes.sum())

        def loss(n: int) -> float:
            r = registry.get(n)
            if r is None or r.utility is None or not r.num_examples:
                return math.inf
            return r.utility / r.num_examples

        ranked = sorted(candidates, key=lambda n: (-loss(n), n))
        return ranked[:k]
