"""Bulyan (El Mhamdi et al., 2018): iterated Krum selection, then a trimmed coordinate mean."""

from __future__ import annotations

import functools

import torch

from fl_ext.aggregators.base import Aggregator, check_f
from fl_ext.aggregators.columnwise import columnwise
from fl_ext.aggregators.distances import pairwise_sq_distances
from fl_ext.aggregators.krum import krum_scores
from fl_ext.aggregators.sortnet import closest_to_median_mean, kernel_applies


def iterated_krum(dist: torch.Tensor, f: int, count: int) -> torch.Tensor:
    """Pick ``count`` rows one by one, each the Krum winner among the rows not yet picked."""
    remaining = list(range(dist.shape[0]))
    picked: list[int] = []
    for _ in range(count):
        scores = krum_scores(dist, f, torch.tensor(remaining))
        best = remaining[int(torch.argmin(scores))]  # first minimum: ties by position
        picked.append(best)
        remaining.remove(best)
    return torch.tensor(picked)


def closest_to_median_block(block: torch.Tensor, beta: int) -> torch.Tensor:
    """Any-device path: per column, the mean of the ``beta`` values closest to the median."""
    theta = block.shape[0]
    ordered = torch.sort(block, dim=0).values.double()
    median = (ordered[(theta - 1) // 2] + ordered[theta // 2]) * 0.5
    gap = (ordered - median).abs()
    nearest = torch.sort(gap, dim=0, stable=True).indices[:beta]  # ties: the lower value
    return (torch.gather(ordered, 0, nearest).sum(dim=0) / beta).to(block.dtype)


class Bulyan(Aggregator):
    """Iterated-Krum selection of ``theta = n - 2f`` updates, then a trimmed coordinate mean.

    Per coordinate, the ``beta = theta - 2f`` selected values closest to their median are
    averaged. Needs ``n >= 4f + 3``.
    """

    def __init__(self, *, f: int = 0) -> None:
        self.f = check_f(f)

    def min_inputs(self) -> int:
        return 4 * self.f + 3

    def requirement(self) -> str:
        return "n >= 4f + 3"

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        n, f = updates.shape[0], self.f
        theta = n - 2 * f
        beta = theta - 2 * f
        chosen = updates[iterated_krum(pairwise_sq_distances(updates), f, theta)]
        if kernel_applies(chosen):
            return closest_to_median_mean(chosen, beta)
        return columnwise(chosen, functools.partial(closest_to_median_block, beta=beta))
