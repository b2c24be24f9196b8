"""Coordinate-wise trimmed mean (Yin et al., 2018)."""

from __future__ import annotations

import torch

from fl_ext.aggregators.base import HonestMajorityRule
from fl_ext.aggregators.columnwise import columnwise
from fl_ext.aggregators.sortnet import kernel_applies, sorted_window_mean


def trimmed_mean_torch(updates: torch.Tensor, f: int) -> torch.Tensor:
    """Any-device path (``torch.sort`` per column block); the CPU path is the sorting network."""
    n = updates.shape[0]

    def trimmed(block: torch.Tensor) -> torch.Tensor:
        kept = torch.sort(block, dim=0).values[f : n - f]
        return (kept.sum(dim=0, dtype=torch.float64) / (n - 2 * f)).to(block.dtype)

    return columnwise(updates, trimmed)


class TrimmedMean(HonestMajorityRule):
    """Per coordinate, drop the ``f`` largest and ``f`` smallest values and average the rest.

    Sorting (not sum minus extremes) keeps it exact when Byzantine values are huge.
    Needs ``n >= 2f + 1``.
    """

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        n, f = updates.shape[0], self.f
        if kernel_applies(updates):
            return sorted_window_mean(updates, f, n - f)
        return trimmed_mean_torch(updates, f)
