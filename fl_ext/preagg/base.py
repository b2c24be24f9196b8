"""Pre-aggregator interface."""

from __future__ import annotations

import torch

from fl_ext.aggregators.state import AggregatorState


class PreAggregator:
    """``[n, d] -> [m, d]``; returns a new tensor, never modifies the input.

    ``output_count(n)`` says how many vectors come out, so configs can be checked up front.
    """

    def output_count(self, n: int) -> int:
        """Rows produced from ``n`` rows."""
        return n

    def __call__(self, updates: torch.Tensor, state: AggregatorState | None = None) -> torch.Tensor:
        raise NotImplementedError


def row_norms(x: torch.Tensor) -> torch.Tensor:
    """L2 norm of every row, accumulated in float64."""
    norms: torch.Tensor = torch.linalg.vector_norm(x, dim=1, dtype=torch.float64)
    return norms


def scale_rows(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """A new tensor with row ``i`` multiplied by ``factors[i]``."""
    scaled: torch.Tensor = x * factors.to(x.dtype).unsqueeze(1)
    return scaled
