"""Krum and Multi-Krum (Blanchard et al., 2017), on exact pairwise distances."""

from __future__ import annotations

import torch

from fl_ext.aggregators.base import Aggregator, NotEnoughInputs, check_f
from fl_ext.aggregators.distances import pairwise_sq_distances
from fl_ext.aggregators.mean import weighted_mean


def krum_scores(dist: torch.Tensor, f: int, candidates: torch.Tensor | None = None) -> torch.Tensor:
    """Score of each candidate: sum of squared distances to its ``m - f - 2`` nearest others.

    ``m`` is the number of candidates (all rows by default); at least one neighbour is used.
    Returns float64 scores aligned with ``candidates``.
    """
    idx = torch.arange(dist.shape[0]) if candidates is None else candidates
    sub = dist[idx][:, idx]
    m = sub.shape[0]
    k = max(m - f - 2, 1)
    if m == 1:
        return torch.zeros(1, dtype=torch.float64)
    others = sub + torch.diag(torch.full((m,), float("inf"), dtype=sub.dtype))  # exclude self
    return torch.topk(others, k, dim=1, largest=False).values.sum(dim=1)


def select_multikrum(dist: torch.Tensor, f: int, m: int) -> torch.Tensor:
    """Indices of the ``m`` lowest Krum scores (ties broken by index)."""
    scores = krum_scores(dist, f)
    order = torch.argsort(scores, stable=True)
    return order[:m]


class MultiKrum(Aggregator):
    """Average of the ``m`` updates with the lowest Krum scores (default ``m = n - f``).

    Needs ``n >= 2f + 3`` (Krum's ``n > 2f + 2``).
    """

    def __init__(self, *, f: int = 0, m: int | None = None) -> None:
        self.f = check_f(f)
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise ValueError(
                f"m (updates averaged by Multi-Krum) must be an integer >= 1 or null, got {m!r}"
            )
        self.m = m

    def min_inputs(self) -> int:
        return max(2 * self.f + 3, self.m or 1)

    def requirement(self) -> str:
        m_bound = self.m is not None and self.m > 2 * self.f + 3
        return "n > 2f + 2" + (f" and n >= m = {self.m}" if m_bound else "")

    def selected(self, updates: torch.Tensor) -> torch.Tensor:
        """Indices of the rows this rule averages."""
        n = updates.shape[0]
        m = self.m if self.m is not None else n - self.f
        if m > n:
            raise NotEnoughInputs(f"Multi-Krum m={m} exceeds the {n} updates")
        return select_multikrum(pairwise_sq_distances(updates), self.f, m)

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        mask = torch.zeros(updates.shape[0], dtype=torch.float64)
        mask[self.selected(updates)] = 1.0  # mean of the selected rows, without copying them
        return weighted_mean(updates, mask)


class Krum(MultiKrum):
    """The single update with the lowest Krum score. Needs ``n >= 2f + 3``."""

    def __init__(self, *, f: int = 0) -> None:
        super().__init__(f=f, m=1)

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        return updates[int(self.selected(updates)[0])].clone()
