"""Centered clipping (Karimireddy et al., 2021); its center is explicit state."""

from __future__ import annotations

import torch

from fl_ext.aggregators.base import HonestMajorityRule
from fl_ext.aggregators.geometric_median import row_distances
from fl_ext.aggregators.state import AggregatorState


def centered_clip(
    updates: torch.Tensor, center: torch.Tensor, tau: float, iterations: int
) -> torch.Tensor:
    """``v <- v + mean_i clip_tau(x_i - v)``, ``iterations`` times, from ``center``."""
    v = center.double().clone()
    n = updates.shape[0]
    for _ in range(iterations):
        norms = row_distances(updates, v)
        scale = torch.clamp(tau / norms.clamp(min=1e-300), max=1.0)  # min(1, tau/||x_i - v||)
        step = torch.zeros_like(v)
        for i in range(n):
            step.add_(updates[i].double() - v, alpha=float(scale[i]) / n)
        v += step
    return v.to(updates.dtype)


class CenteredClipping(HonestMajorityRule):
    """Clip each update's distance to the center at ``tau`` and average; repeat.

    The center is the previous round's aggregate, kept in the strategy's
    :class:`AggregatorState` (zeros in the first round). Needs ``n >= 2f + 1``.
    """

    def __init__(self, *, f: int = 0, tau: float = 1.0, iterations: int = 3) -> None:
        super().__init__(f=f)
        if not tau > 0:
            raise ValueError(f"tau (clipping radius) must be > 0, got {tau}")
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")
        self.tau, self.iterations = float(tau), iterations

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        return centered_clip(updates, torch.zeros_like(updates[0]), self.tau, self.iterations)

    def aggregate_with_state(
        self, updates: torch.Tensor, weights: torch.Tensor | None, state: AggregatorState
    ) -> torch.Tensor:
        """Start from ``state.center`` and store the result there for the next round."""
        center = state.center if state.center is not None else torch.zeros_like(updates[0])
        if center.shape != updates[0].shape:
            raise ValueError(
                f"state center has shape {tuple(center.shape)}, updates {tuple(updates[0].shape)}"
            )
        out = centered_clip(updates, center, self.tau, self.iterations)
        state.center = out.clone()
        return out
