"""Coordinate-wise trimmed mean (Yin et al., 2018)."""

from __future__ import annotations

import torch

from fl_ext.aggregators.base import HonestMajorityRule
from fl_ext.aggregators.columnwise import columnwise


class TrimmedMean(HonestMajorityRule):
    """Per coordinate, drop the ``f`` largest and ``f`` smallest values and average the rest.

    Sorting (not sum minus extremes) keeps it exact when Byzantine values are huge.
    Needs ``n >= 2f + 1``.
    """

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        n, f = updates.shape[0], self.f

        def trimmed(block: torch.Tensor) -> torch.Tensor:
            kept = torch.sort(block, dim=0).values[f : n - f]
            return (kept.sum(dim=0, dtype=torch.float64) / (n - 2 * f)).to(block.dtype)

        return columnwise(updates, trimmed)
