"""Coordinate-wise median (Yin et al., 2018)."""

from __future__ import annotations

import torch

from fl_ext.aggregators.base import HonestMajorityRule
from fl_ext.aggregators.columnwise import columnwise
from fl_ext.aggregators.sortnet import kernel_applies, sorted_window_mean


def median_block(block: torch.Tensor) -> torch.Tensor:
    """Any-device path for a column block (``torch.sort``); the CPU path is the sorting network."""
    n = block.shape[0]
    ordered = torch.sort(block, dim=0).values
    low, high = ordered[(n - 1) // 2], ordered[n // 2]
    return (low.double() * 0.5 + high.double() * 0.5).to(block.dtype)  # no overflow at 3e38


class CoordinateMedian(HonestMajorityRule):
    """Per coordinate, the median of the n values (mean of the two middle ones when n is even).

    Robust while fewer than half the updates are Byzantine: ``n >= 2f + 1``.
    """

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        n = updates.shape[0]
        if kernel_applies(updates):
            return sorted_window_mean(updates, (n - 1) // 2, n // 2 + 1)
        return columnwise(updates, median_block)
