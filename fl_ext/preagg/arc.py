"""Adaptive robust clipping (Allouah et al., 2024, "The vital role of gradient clipping")."""

from __future__ import annotations

import torch

from fl_ext.aggregators.base import check_f
from fl_ext.aggregators.state import AggregatorState
from fl_ext.preagg.base import PreAggregator, row_norms, scale_rows
from fl_ext.preagg.clipping import clip_factors


class ARC(PreAggregator):
    """Clip the ``k = floor(2 (f/n) (n - f))`` largest updates to the largest unclipped norm.

    The other updates are unchanged.
    """

    def __init__(self, *, f: int = 0) -> None:
        self.f = check_f(f)

    def clipped_count(self, n: int) -> int:
        """``k`` for ``n`` updates."""
        return int(2 * self.f * (n - self.f) / n) if n > 0 else 0

    def __call__(self, updates: torch.Tensor, state: AggregatorState | None = None) -> torch.Tensor:
        n = updates.shape[0]
        k = self.clipped_count(n)
        if k <= 0 or k >= n:
            return updates.clone()
        norms = row_norms(updates)
        threshold = float(torch.sort(norms).values[n - k - 1])
        return scale_rows(updates, clip_factors(norms, threshold))
