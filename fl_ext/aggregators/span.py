"""Iterative rules on affine combinations of the updates, from one float64 Gram pass.

The geometric median's Weiszfeld iterates and centered clipping's iterates are affine
combinations ``z = sum_j a_j x_j`` (``sum_j a_j = 1``) of the updates (and, for centered
clipping, of the starting center). Every distance they need, ``||x_i - z||``, follows from
the Gram matrix ``G`` of ``y_j = x_j - c`` around one update ``c`` in the bulk:
``||x_i - z||^2 = G_ii - 2 (G a)_i + a^T G a``. So the d-dimensional data is read twice in
all (one Gram pass, one pass to form the result) instead of twice per iteration.

Accuracy: ``G`` is float64 on centred data, so a distance carries an absolute error of about
1e-16 of the bulk's squared spread (1e-8 of the spread itself) -- far below the float32
resolution of the inputs. A huge Byzantine row does not spoil it: its coefficient is tiny and
enters the products linearly. If the first row is itself far from the bulk, the Gram matrix
is recomputed around the most central row (the same test as :mod:`distances`).
"""

from __future__ import annotations

import torch

from fl_ext.aggregators.distances import bulk_centered_gram

_BLOCK = 1 << 15


class RowSpan:
    """Gram-matrix view of ``updates`` (plus an optional ``extra`` vector as one more row)."""

    def __init__(self, updates: torch.Tensor, extra: torch.Tensor | None = None) -> None:
        self.updates, self.extra = updates, extra
        gram, dots, self.center = bulk_centered_gram(updates, extra=extra)
        self.gram, self.dots = gram.cpu(), dots.cpu()
        c = updates[self.center].double()
        self.center_sq = float(torch.dot(c, c))

    @property
    def rows(self) -> int:
        return self.gram.shape[0]

    def sq_distances(self, a: torch.Tensor) -> torch.Tensor:
        """``||row_i - z||^2`` for every row, ``z = sum_j a_j row_j`` (``a`` sums to 1)."""
        ga = self.gram @ a
        return (self.gram.diagonal() - 2.0 * ga + torch.dot(a, ga)).clamp(min=0.0)

    def sq_norm_of_combination(self, c: torch.Tensor) -> float:
        """``||sum_j c_j y_j||^2``: e.g. the move between two iterates for ``c = a - a_old``."""
        return max(float(c @ self.gram @ c), 0.0)

    def sq_norm(self, a: torch.Tensor) -> float:
        """``||z||^2`` for ``z = sum_j a_j row_j`` (``a`` sums to 1)."""
        return max(self.center_sq + 2.0 * float(a @ self.dots) + float(a @ self.gram @ a), 0.0)

    def combine(self, a: torch.Tensor) -> torch.Tensor:
        """``sum_j a_j row_j``, accumulated in float64 block by block, in the updates' dtype."""
        x = self.updates
        n, d = x.shape
        out = torch.empty(d, dtype=x.dtype, device=x.device)
        coeffs = a.to(device=x.device, dtype=torch.float64)
        for start in range(0, d, _BLOCK):
            stop = min(start + _BLOCK, d)
            acc = coeffs[:n] @ x[:, start:stop].double()
            if self.extra is not None:
                acc += coeffs[n] * self.extra[start:stop].double()
            out[start:stop] = acc
        return out
