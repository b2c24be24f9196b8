"""Geometric median by smoothed Weiszfeld iterations (Pillutla et al., 2022, RFA)."""

from __future__ import annotations

import torch

from fl_ext.aggregators.base import HonestMajorityRule
from fl_ext.aggregators.mean import weighted_mean

_BLOCK = 1 << 15


def row_distances(x: torch.Tensor, z: torch.Tensor, *, block: int = _BLOCK) -> torch.Tensor:
    """``||x_i - z||`` for every row, from explicit differences (no cancellation), float64."""
    sq = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[1], block):
        stop = min(start + block, x.shape[1])
        diff = x[:, start:stop].double() - z[start:stop].double()
        sq += (diff * diff).sum(dim=1)
    return sq.sqrt()


class GeometricMedian(HonestMajorityRule):
    """argmin_z sum_i a_i ||x_i - z||, approximately: Weiszfeld with distances floored at ``nu``.

    Stops when the estimate moves less than ``tol`` (relative) or after ``max_iter``
    iterations. Robust while fewer than half the updates are Byzantine (``n >= 2f + 1``).
    Client weights are used only with ``weighted=True``.
    """

    def __init__(
        self,
        *,
        f: int = 0,
        nu: float = 1e-6,
        tol: float = 1e-6,
        max_iter: int = 100,
        weighted: bool = False,
    ) -> None:
        super().__init__(f=f)
        if not nu > 0:
            raise ValueError(f"nu (distance floor) must be > 0, got {nu}")
        if not tol > 0:
            raise ValueError(f"tol must be > 0, got {tol}")
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
        self.nu, self.tol, self.max_iter = float(nu), float(tol), max_iter
        self.uses_weights = bool(weighted)

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        alpha = (
            torch.ones(updates.shape[0], dtype=torch.float64)
            if weights is None
            else weights.double().cpu()
        )
        z = weighted_mean(updates, alpha)
        for _ in range(self.max_iter):
            beta = alpha / row_distances(updates, z).cpu().clamp(min=self.nu)
            z_new = weighted_mean(updates, beta)
            moved = float(row_distances(z_new.unsqueeze(0), z)[0])
            z = z_new
            if moved <= self.tol * (float(torch.linalg.vector_norm(z.double())) + self.nu):
                break
        return z
