"""Weighted mean, FedAvg's rule (McMahan et al., 2017)."""

from __future__ import annotations

import torch

from fl_ext.aggregators.base import Aggregator, check_f


def weighted_mean(updates: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``sum_i w_i x_i / sum_i w_i`` accumulated in float64 row by row; uniform if no weights."""
    n = updates.shape[0]
    if weights is None:
        w = torch.full((n,), 1.0 / n, dtype=torch.float64)
    else:
        w = weights.detach().to(dtype=torch.float64, device="cpu")
        w = w / w.sum()
    out = torch.zeros(updates.shape[1], dtype=torch.float64, device=updates.device)
    for i in range(n):  # row-wise axpy: no [n, d] float64 temporary; zero weights skipped
        if float(w[i]) != 0.0:
            out.add_(updates[i], alpha=float(w[i]))
    return out.to(updates.dtype)


class WeightedMean(Aggregator):
    """FedAvg: the (example-weighted) mean. Not robust: one Byzantine update moves it anywhere.

    ``f`` is accepted so every rule takes the same parameters (sweeps set ``aggregator.f``);
    the mean tolerates no Byzantine update whatever its value.
    """

    is_plain_mean = True

    uses_weights = True

    def __init__(self, *, f: int = 0) -> None:
        self.f = check_f(f)

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        return weighted_mean(updates, weights)
