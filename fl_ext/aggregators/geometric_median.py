"""Geometric median by smoothed Weiszfeld iterations (Pillutla et al., 2022, RFA).

The iterates are combinations of the updates, so every iteration works on the n x n Gram
matrix (:class:`RowSpan`): the updates are read twice in all, whatever the iteration count.
"""

from __future__ import annotations

import torch

from fl_ext.aggregators.base import HonestMajorityRule
from fl_ext.aggregators.span import RowSpan


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
        n = updates.shape[0]
        alpha = torch.ones(n, dtype=torch.float64) if weights is None else weights.double().cpu()
        span = RowSpan(updates)
        a = alpha / alpha.sum()  # z_0: the (weighted) mean
        for _ in range(self.max_iter):
            beta = alpha / span.sq_distances(a).sqrt().clamp(min=self.nu)
            a_new = beta / beta.sum()
            moved = span.sq_norm_of_combination(a_new - a) ** 0.5
            a = a_new
            if moved <= self.tol * (span.sq_norm(a) ** 0.5 + self.nu):
                break
        return span.combine(a)
