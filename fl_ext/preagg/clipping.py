"""Static norm clipping: every update rescaled to norm at most ``c``."""

from __future__ import annotations

import torch

from fl_ext.aggregators.state import AggregatorState
from fl_ext.preagg.base import PreAggregator, row_norms, scale_rows


def clip_factors(norms: torch.Tensor, threshold: float) -> torch.Tensor:
    """``min(1, threshold / norm)`` per row (rows of norm 0 stay)."""
    return torch.clamp(threshold / norms.clamp(min=1e-300), max=1.0)


class StaticClipping(PreAggregator):
    """``x_i * min(1, c / ||x_i||)``."""

    def __init__(self, *, c: float = 1.0) -> None:
        if not c > 0:
            raise ValueError(f"clipping threshold c must be > 0, got {c}")
        self.c = float(c)

    def __call__(self, updates: torch.Tensor, state: AggregatorState | None = None) -> torch.Tensor:
        return scale_rows(updates, clip_factors(row_norms(updates), self.c))
