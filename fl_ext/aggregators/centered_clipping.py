"""Centered clipping (Karimireddy et al., 2021); its center is explicit state."""

from __future__ import annotations

import torch

from fl_ext.aggregators.base import HonestMajorityRule
from fl_ext.aggregators.span import RowSpan
from fl_ext.aggregators.state import AggregatorState

_BLOCK = 1 << 15
_DIRECT_MAX_ITERATIONS = 2  # beyond this the one-Gram-pass form is cheaper (bench.aggregators)


def centered_clip(
    updates: torch.Tensor, center: torch.Tensor, tau: float, iterations: int
) -> torch.Tensor:
    """``v <- v + mean_i clip_tau(x_i - v)``, ``iterations`` times, from ``center``."""
    if iterations <= _DIRECT_MAX_ITERATIONS:
        return _centered_clip_direct(updates, center, tau, iterations)
    return _centered_clip_span(updates, center, tau, iterations)


def _clip_scales(norms: torch.Tensor, tau: float) -> torch.Tensor:
    return torch.clamp(tau / norms.clamp(min=1e-300), max=1.0)  # min(1, tau/||x_i - v||)


def _centered_clip_direct(
    updates: torch.Tensor, center: torch.Tensor, tau: float, iterations: int
) -> torch.Tensor:
    """Two reads of the updates per iteration, float32 arithmetic where it is exact enough.

    ``v`` (float64) is split into ``v_hi + v_lo`` (two float32): ``(x - v_hi) - v_lo`` is
    accurate to float32 rounding *of the difference*, however large ``|v|`` is.
    """
    n, d = updates.shape
    v = center.double().clone()
    for _ in range(iterations):
        v_hi = v.to(updates.dtype)
        v_lo = (v - v_hi.double()).to(updates.dtype)
        sq = torch.zeros(n, dtype=torch.float64, device=updates.device)
        for start in range(0, d, _BLOCK):
            stop = min(start + _BLOCK, d)
            diff = updates[:, start:stop] - v_hi[start:stop]
            diff -= v_lo[start:stop]
            sq += torch.linalg.vector_norm(diff, dim=1, dtype=torch.float64).square()
        w = _clip_scales(sq.sqrt(), tau) / n
        v_next = v * (1.0 - float(w.sum()))
        for start in range(0, d, _BLOCK):
            stop = min(start + _BLOCK, d)
            v_next[start:stop] += w @ updates[:, start:stop].double()
        v = v_next
    return v.to(updates.dtype)


def _centered_clip_span(
    updates: torch.Tensor, center: torch.Tensor, tau: float, iterations: int
) -> torch.Tensor:
    """One Gram pass, then every iteration on n x n numbers.

    The iterates are combinations of the updates and the center (one more row of the
    :class:`RowSpan`), so the updates are read twice in all, whatever the iteration count.
    """
    n = updates.shape[0]
    span = RowSpan(updates, extra=center)
    a = torch.zeros(n + 1, dtype=torch.float64)
    a[n] = 1.0  # v_0 = center
    for _ in range(iterations):
        norms = span.sq_distances(a)[:n].sqrt()
        scale = _clip_scales(norms, tau)
        a = a * (1.0 - float(scale.sum()) / n)
        a[:n] += scale / n
    return span.combine(a)


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
