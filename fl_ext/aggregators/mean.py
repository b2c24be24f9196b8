"""Weighted mean, FedAvg's rule (McMahan et al., 2017)."""

from __future__ import annotations

import torch


class WeightedMean:
    """``sum_i w_i x_i / sum_i w_i``; uniform when ``weights`` is None.

    The weighted sum is accumulated in float64 so a large ``n`` does not lose precision; the
    result has the updates' dtype.
    """

    def __call__(self, updates: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        if updates.ndim != 2 or updates.shape[0] < 1:
            raise ValueError(f"updates must be [n >= 1, d], got shape {tuple(updates.shape)}")
        n = updates.shape[0]
        if weights is None:
            w = torch.full((n,), 1.0 / n, dtype=torch.float64, device=updates.device)
        else:
            if weights.shape != (n,):
                raise ValueError(f"weights must have shape ({n},), got {tuple(weights.shape)}")
            w = weights.to(device=updates.device, dtype=torch.float64)
            if not torch.isfinite(w).all() or (w < 0).any() or float(w.sum()) <= 0:
                raise ValueError(f"weights must be finite, >= 0 and not all 0, got {w.tolist()}")
            w = w / w.sum()
        out = torch.zeros(updates.shape[1], dtype=torch.float64, device=updates.device)
        for i in range(n):  # row-wise axpy: no [n, d] float64 temporary
            out.add_(updates[i], alpha=float(w[i]))
        return out.to(updates.dtype)
