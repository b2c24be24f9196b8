"""Nearest-neighbour mixing (Allouah et al., 2023, "Fixing by mixing")."""

from __future__ import annotations

import torch

from fl_ext.aggregators.base import check_f
from fl_ext.aggregators.distances import pairwise_sq_distances
from fl_ext.aggregators.state import AggregatorState
from fl_ext.preagg.base import PreAggregator


class NNM(PreAggregator):
    """Replace each update by the mean of its ``n - f`` nearest updates (itself included).

    Neighbours come from exact distances; ties are broken by index.
    """

    def __init__(self, *, f: int = 0) -> None:
        self.f = check_f(f)

    def __call__(self, updates: torch.Tensor, state: AggregatorState | None = None) -> torch.Tensor:
        n = updates.shape[0]
        k = n - self.f
        if k < 1:
            raise ValueError(f"NNM with f={self.f} needs n > f, got n={n}")
        dist = pairwise_sq_distances(updates)
        # stable order: self first (distance 0), then by distance, ties by index
        order = torch.argsort(
            dist + torch.diag(torch.full((n,), -1.0, dtype=dist.dtype)), dim=1, stable=True
        )
        mixing = torch.zeros((n, n), dtype=torch.float64)
        mixing.scatter_(1, order[:, :k], 1.0 / k)
        return _mix(mixing, updates)


def _mix(mixing: torch.Tensor, updates: torch.Tensor) -> torch.Tensor:
    """``mixing @ updates`` with float64 accumulation, block by block."""
    out = torch.empty_like(updates)
    block = 1 << 15
    for start in range(0, updates.shape[1], block):
        stop = min(start + block, updates.shape[1])
        out[:, start:stop] = (mixing @ updates[:, start:stop].double()).to(updates.dtype)
    return out
